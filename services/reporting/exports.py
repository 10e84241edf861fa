"""Exports: any metrics answer as CSV or XLSX, and the quarterly funder report.

Every export carries what the API answered for the same question, suppressed unless the
internal view was asked for (and then it says so, in its name and inside). An XLSX adds a
sheet of the definitions (with their versions) and a note on suppression. The funder report is
laid out as funders' templates are, description | count | numerator | denominator | percent,
so its rows paste straight into a web form.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Font

from services.reporting.figures import Figures
from services.reporting.metrics import METRICS_BY_ID, Metric

__all__ = [
    "EXPORTS",
    "REFERRAL_KIND_LABELS",
    "export_name",
    "metrics_table",
    "quarterly_table",
    "suppression_note",
    "to_csv",
    "to_xlsx",
]

EXPORTS = ("metrics", "quarterly")
"""The exports by name: /v1/exports/{name}.csv and .xlsx."""

REFERRAL_KIND_LABELS = {
    "moud_buprenorphine": "medication for opioid use disorder (buprenorphine)",
    "moud_methadone": "medication for opioid use disorder (methadone)",
    "detox": "detox",
    "inpatient": "inpatient treatment",
    "outpatient": "outpatient treatment",
    "mental_health": "mental health",
    "housing": "housing",
    "food": "food",
    "healthcare": "health care",
    "disease_testing": "disease testing",
}

QUARTERLY_HEADER = ("description", "count", "numerator", "denominator", "percent")

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def export_name(figures: Figures, name: str, period: str, extension: str) -> str:
    """portline_<program>_<period>_<name>[_INTERNAL].<extension>"""
    program = _SAFE.sub("-", figures.program_id).strip("-") or "program"
    internal = "_INTERNAL" if figures.view == "internal" else ""
    return f"portline_{program}_{period}_{name}{internal}.{extension}"


def suppression_note(figures: Figures) -> list[str]:
    rules = figures.rules
    if figures.view == "internal":
        return [
            "INTERNAL FIGURES - NOT FOR PUBLICATION.",
            f"These are program {figures.program_id}'s own figures without small-cell "
            "suppression, for the team's internal use only.",
        ]
    return [
        f"Counts from 1 to {rules.suppression_threshold - 1} are shown as "
        f'"<{rules.suppression_threshold}" (primary suppression, as CDC WONDER).',
        "A rate or median whose numerator, denominator or number of values is in that range "
        'is hidden and shown as "*".',
        'Further cells are hidden (shown as "*") wherever a hidden figure could otherwise be '
        "worked out from the other cells of its row or column and the published totals "
        "(complementary suppression, as Washington State DOH requires).",
        f"Rates on {rules.unstable_max} events or fewer are flagged unstable (CDC WISQARS).",
        "Zero is shown as 0.",
    ]


def metrics_table(figures: Figures) -> tuple[list[str], list[list[Any]]]:
    """Every row of a metrics answer, flat: metric, version, title, each breakdown, the
    figures, and whether they are suppressed or unstable."""
    header = [
        "metric",
        "version",
        "title",
        *figures.dims,
        "value",
        "numerator",
        "denominator",
        "suppressed",
        "unstable",
        "display",
    ]
    rows = [
        [
            row["metric"],
            row["version"],
            METRICS_BY_ID[row["metric"]].title,
            *(row["group"][d] for d in figures.dims),
            row["value"],
            row["numerator"],
            row["denominator"],
            row["suppressed"],
            row["unstable"],
            row["display"],
        ]
        for row in figures.rows
    ]
    return header, rows


def _report_line(metric: Metric, row: dict[str, Any], description: str) -> list[Any]:
    if row["unstable"]:
        description += " (unstable: 20 or fewer events)"
    if metric.unit == "rate":
        return [description, "", row["numerator"], row["denominator"], row["display"]]
    if metric.unit == "hours":
        return [f"{description} (hours)", row["display"], "", row["denominator"], ""]
    return [description, row["display"], "", "", ""]


def quarterly_table(overall: Figures, by_kind: Figures) -> tuple[list[str], list[list[Any]]]:
    """The funder report: every metric for the quarter, then referrals by kind."""
    lines: list[list[Any]] = []
    for row in overall.rows:
        metric = METRICS_BY_ID[row["metric"]]
        lines.append(_report_line(metric, row, metric.title))
    for row in by_kind.rows:
        metric = METRICS_BY_ID[row["metric"]]
        kind = REFERRAL_KIND_LABELS.get(
            row["group"]["referral_kind"], row["group"]["referral_kind"]
        )
        lines.append(_report_line(metric, row, f"{metric.title}: {kind}"))
    return list(QUARTERLY_HEADER), lines


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return out.getvalue().encode("utf-8")


def _definitions(metrics: Sequence[Metric]) -> list[list[Any]]:
    return [
        [
            m.id,
            m.version,
            m.title,
            m.definition,
            m.unit,
            m.numerator_label or "",
            m.denominator_label or "",
            m.computation,
        ]
        for m in metrics
    ]


def to_xlsx(
    figures: Figures,
    *,
    sheet: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    metrics: Sequence[Metric],
    period: str,
) -> bytes:
    """The figures, the definitions of the metrics in them (with versions), and a note on
    suppression and on what the workbook covers."""
    workbook = Workbook()
    bold = Font(bold=True)
    figures_sheet = workbook.active
    assert figures_sheet is not None
    figures_sheet.title = sheet
    figures_sheet.append(list(header))
    for row in rows:
        figures_sheet.append(["" if v is None else v for v in row])
    for cell in figures_sheet[1]:
        cell.font = bold
    figures_sheet.freeze_panes = "A2"

    definitions = workbook.create_sheet("Definitions")
    definitions.append(
        [
            "metric",
            "version",
            "title",
            "definition",
            "unit",
            "numerator",
            "denominator",
            "how it is computed",
        ]
    )
    for definition in _definitions(metrics):
        definitions.append(definition)
    for cell in definitions[1]:
        cell.font = bold

    note = workbook.create_sheet("Suppression")
    note.append(["PORTline figures"])
    note["A1"].font = bold
    note.append(["program", figures.program_id])
    note.append(["period", period])
    note.append(
        ["dates", f"{figures.start.isoformat()} to {figures.end.isoformat()} (incident dates)"]
    )
    note.append(["time zone", figures.rules.timezone])
    note.append(["figures as of", figures.as_of.isoformat()])
    note.append(["view", figures.view])
    note.append([])
    for sentence in suppression_note(figures):
        note.append([sentence])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()
