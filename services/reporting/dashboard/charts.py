"""The dashboard's charts as data: a Vega-Lite specification, the table behind it and a text
alternative, built from Reporting I's figures (already suppressed, or internal). Pure
functions: no database, no renderer.

A figure that suppression hid is never drawn: it has no value to draw. It keeps its place in
the table behind the chart, as the published display shows it (`<10`, `*`), and the chart's
text says how many figures are hidden. A chart's `marks` is how many data marks (bars, points,
cells) it draws, which the browser tests compare with what the page shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FUNNEL",
    "FUNNEL_RATES",
    "SOURCE_LABELS",
    "TREND_WEEKS",
    "Chart",
    "Row",
    "counties_heat_map",
    "first_attempt_by_month",
    "funnel",
    "overdoses_by_week",
    "supplies_by_month",
    "trend",
]

Row = Mapping[str, Any]
"""One figure as `GET /v1/metrics` answers it: metric, group, value, suppressed, display..."""

SOURCE_LABELS = {
    "ems": "EMS",
    "ed": "ED",
    "law_enforcement": "Law enforcement",
    "community": "Community",
    "all": "All sources",
}
SOURCE_COLORS = {
    "EMS": "#1f5f8b",
    "ED": "#e07b39",
    "Law enforcement": "#5b8c2a",
    "Community": "#8e5ea2",
    "All sources": "#1f5f8b",
    "All (split hidden)": "#9aa5b1",
}
SPLIT_HIDDEN = "All (split hidden)"

FUNNEL: tuple[tuple[str, str], ...] = (
    ("people_referred", "Referred"),
    ("people_attempted", "Attempted"),
    ("people_reached", "Reached"),
    ("people_engaged", "Engaged"),
    ("referrals_made", "Referred on"),
    ("referrals_care_started", "Care started"),
)
"""The funnel's steps: people (the first four), then referrals, as Reporting I counts them."""
FUNNEL_RATES = {"people_reached": "reach_rate", "people_engaged": "engagement_rate"}
"""Steps whose share of the step before is a metric of its own."""

TREND_WEEKS = 4
"""The trend is the moving average of the weekly totals over this many weeks."""
WIDTH = 640
WIDE = 1040
"""The weekly chart spans the page on a desk (SVG scales down to a phone)."""
FONT = "DejaVu Sans, Verdana, sans-serif"
CONFIG: dict[str, Any] = {
    "font": FONT,
    "view": {"stroke": None},
    "axis": {"labelFontSize": 11, "titleFontSize": 11, "gridColor": "#e6e6e6"},
    "legend": {"orient": "top", "labelFontSize": 11, "titleFontSize": 11, "title": None},
    "background": "white",
}
NO_DATA = "No figures for this period."


@dataclass(frozen=True, slots=True)
class Chart:
    id: str
    title: str
    summary: str
    """The text alternative: what the chart shows, in a sentence or three."""
    spec: dict[str, Any]
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    """The table behind the chart, as published (suppressed cells show `<10` or `*`)."""
    marks: int
    """Data marks drawn: bars, points or cells."""
    hidden: int
    """Figures suppression hid, which the chart therefore does not draw."""
    note: str = ""
    """What a reader should know to read it right."""


def _drawn(row: Row | None) -> bool:
    return row is not None and not row["suppressed"] and row["value"] is not None


def _display(row: Row | None) -> str:
    return "0" if row is None else str(row["display"])


def _hidden(rows: Sequence[Row | None]) -> int:
    return sum(1 for r in rows if r is not None and r["suppressed"])


def _hidden_sentence(hidden: int) -> str:
    if not hidden:
        return ""
    figures = "figure is" if hidden == 1 else "figures are"
    return f" {hidden} {figures} hidden as small numbers and not drawn."


def _spec(summary: str, data: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "description": summary,
        "data": {"values": data},
        "config": CONFIG,
        **body,
    }


def trend(weeks: Sequence[str], totals: Mapping[str, Row]) -> list[float | None]:
    """The moving average of the weekly totals over TREND_WEEKS weeks; None where a week of
    the window is hidden (an average over a hidden week would reveal it) or not yet full."""
    values: list[float | None] = []
    for i in range(len(weeks)):
        window = [totals.get(w) for w in weeks[max(0, i - TREND_WEEKS + 1) : i + 1]]
        if i < TREND_WEEKS - 1 or not all(_drawn(r) for r in window):
            values.append(None)
        else:
            values.append(round(sum(float(r["value"]) for r in window if r) / TREND_WEEKS, 1))
    return values


def overdoses_by_week(
    weeks: Sequence[str],
    sources: Sequence[str],
    cells: Mapping[tuple[str, str], Row],
    totals: Mapping[str, Row],
) -> Chart:
    """Bars of overdoses per week, stacked by source, with the 4-week moving average of the
    weekly totals as a line. A week whose split by source is (partly) hidden shows its total
    alone, in grey, when the total itself is shown: the split would reveal a small number,
    the total is published anyway."""
    labels = [SOURCE_LABELS.get(s, s) for s in sources]
    averages = trend(weeks, totals)
    data: list[dict[str, Any]] = []
    split_hidden = False
    for week in weeks:
        week_cells = [cells.get((week, source)) for source in sources]
        if all(_drawn(row) or row is None for row in week_cells):
            for label, row in zip(labels, week_cells, strict=True):
                if row is not None and row["value"] > 0:
                    data.append({"kind": "bar", "week": week, "source": label, "n": row["value"]})
        elif _drawn(total := totals.get(week)) and total and total["value"] > 0:
            split_hidden = True
            data.append({"kind": "bar", "week": week, "source": SPLIT_HIDDEN, "n": total["value"]})
    bars = len(data)
    data += [
        {"kind": "trend", "week": w, "n": a}
        for w, a in zip(weeks, averages, strict=True)
        if a is not None
    ]
    domain = [*labels, *([SPLIT_HIDDEN] if split_hidden else [])]
    hidden = _hidden([cells.get((w, s)) for w in weeks for s in sources])
    shown_totals = [(w, totals[w]["value"]) for w in weeks if _drawn(totals.get(w))]
    summary = f"Overdoses reported each week from {weeks[0]} to {weeks[-1]}, by source"
    summary += f" ({', '.join(labels)})." if labels else "."
    if shown_totals:
        week, most = max(shown_totals, key=lambda t: (t[1], t[0]))
        summary += f" The most in one week: {most:g} ({week})."
    known = [a for a in averages if a is not None]
    if len(known) >= 2:
        summary += (
            f" The {TREND_WEEKS}-week average went from {known[0]:g} to {known[-1]:g} a week."
        )
    summary += _hidden_sentence(hidden)
    x = {
        "field": "week",
        "type": "ordinal",
        "title": None,
        "scale": {"domain": list(weeks)},
        "axis": {"labelAngle": -60, "labelOverlap": True},
    }
    spec = _spec(
        summary,
        data,
        width=WIDE,
        height=220,
        layer=[
            {
                "transform": [{"filter": "datum.kind === 'bar'"}],
                "mark": {"type": "bar"},
                "encoding": {
                    "x": x,
                    "y": {
                        "field": "n",
                        "type": "quantitative",
                        "aggregate": "sum",
                        "title": "Overdoses",
                    },
                    "color": {
                        "field": "source",
                        "type": "nominal",
                        "scale": {
                            "domain": domain,
                            "range": [SOURCE_COLORS.get(label, "#777") for label in domain],
                        },
                    },
                    "order": {"field": "source"},
                },
            },
            {
                "transform": [{"filter": "datum.kind === 'trend'"}],
                "mark": {"type": "line", "color": "#222", "strokeWidth": 2, "strokeDash": [5, 3]},
                "encoding": {"x": x, "y": {"field": "n", "type": "quantitative"}},
            },
        ],
    )
    rows = tuple(
        (
            week,
            *(_display(cells.get((week, s))) for s in sources),
            _display(totals.get(week)),
            "" if average is None else f"{average:g}",
        )
        for week, average in zip(weeks, averages, strict=True)
    )
    return Chart(
        id="overdoses-by-week",
        title="Overdoses per week, by source",
        summary=summary,
        spec=spec,
        columns=("Week", *labels, "All", f"{TREND_WEEKS}-week average"),
        rows=rows,
        marks=bars,
        hidden=hidden,
        note=f"The dashed line is the average of the last {TREND_WEEKS} weeks' totals; it "
        "breaks where a week's total is hidden. A grey bar is a week's total whose split by "
        "source would reveal a small number.",
    )


def funnel(overall: Mapping[str, Row]) -> Chart:
    """The steps from referral to care, one bar each, labelled with the published figure."""
    steps = [(metric, label, overall.get(metric)) for metric, label in FUNNEL]
    data = [
        {
            "step": label,
            "order": i,
            "n": row["value"] if _drawn(row) and row else 0,
            "display": _display(row),
            "drawn": bool(_drawn(row) and row and row["value"] > 0),
        }
        for i, (_metric, label, row) in enumerate(steps)
    ]
    bars = sum(1 for d in data if d["drawn"])
    hidden = _hidden([row for _m, _l, row in steps])
    summary = "From referral to care: " + ", ".join(
        f"{label.lower()} {_display(row)}" for _m, label, row in steps
    )
    summary += ". The first four steps count people; referred on and care started count "
    summary += "referrals." + _hidden_sentence(hidden)
    y = {"field": "step", "type": "nominal", "title": None, "sort": [label for _m, label in FUNNEL]}
    spec = _spec(
        summary,
        data,
        width=WIDTH - 140,
        height={"step": 30},
        layer=[
            {
                "transform": [{"filter": "datum.drawn"}],
                "mark": {"type": "bar", "color": "#1f5f8b"},
                "encoding": {"y": y, "x": {"field": "n", "type": "quantitative", "title": None}},
            },
            {
                "mark": {"type": "text", "align": "left", "dx": 4, "fontSize": 12},
                "encoding": {
                    "y": y,
                    "x": {"field": "n", "type": "quantitative"},
                    "text": {"field": "display"},
                },
            },
        ],
    )
    rows = []
    for metric, label, row in steps:
        rate = FUNNEL_RATES.get(metric)
        share = _display(overall.get(rate)) if rate else ""
        rows.append((label, _display(row), share))
    return Chart(
        id="funnel",
        title="From referral to care",
        summary=summary,
        spec=spec,
        columns=("Step", "Figure", "Share of the step before"),
        rows=tuple(rows),
        marks=bars,
        hidden=hidden,
        note="Referred, attempted, reached and engaged count people; referred on and care "
        "started count referrals (a person may have several).",
    )


def first_attempt_by_month(
    months: Sequence[str],
    within_24h: Mapping[str, Row],
    within_72h: Mapping[str, Row],
    median_hours: Mapping[str, Row],
    overall: Mapping[str, Row],
) -> Chart:
    """The share of people first attempted within 24 and 72 hours, per month, as lines."""
    series = (("Within 24 h", within_24h), ("Within 72 h", within_72h))
    data = [
        {"month": m, "series": name, "percent": round(float(rows[m]["value"]) * 100, 1)}
        for name, rows in series
        for m in months
        if _drawn(rows.get(m))
    ]
    hidden = _hidden([rows.get(m) for _n, rows in series for m in months])
    summary = (
        "Share of people to be called or texted whom a peer first tried to reach within 24 "
        f"hours and within 72 hours, by month. Over the period: "
        f"{_display(overall.get('first_attempt_within_24h'))} within 24 hours, "
        f"{_display(overall.get('first_attempt_within_72h'))} within 72 hours; the median "
        f"time to a first attempt was {_display(overall.get('median_hours_to_first_attempt'))}"
        " hours." + _hidden_sentence(hidden)
    )
    encoding = {
        "x": {
            "field": "month",
            "type": "ordinal",
            "title": None,
            "scale": {"domain": list(months)},
            "axis": {"labelAngle": 0, "labelOverlap": True},
        },
        "y": {
            "field": "percent",
            "type": "quantitative",
            "title": "% of people",
            "scale": {"domain": [0, 100]},
        },
        "color": {
            "field": "series",
            "type": "nominal",
            "scale": {"domain": [n for n, _r in series], "range": ["#1f5f8b", "#e07b39"]},
        },
    }
    spec = _spec(
        summary,
        data,
        width=WIDTH,
        height=200,
        layer=[
            {"mark": {"type": "line", "strokeWidth": 2}, "encoding": encoding},
            {"mark": {"type": "point", "filled": True, "size": 60}, "encoding": encoding},
        ],
    )
    rows = tuple(
        (
            m,
            _display(within_24h.get(m)),
            _display(within_72h.get(m)),
            _display(median_hours.get(m)),
        )
        for m in months
    )
    return Chart(
        id="first-attempt",
        title="Time to first attempt",
        summary=summary,
        spec=spec,
        columns=("Month", "Within 24 h", "Within 72 h", "Median hours"),
        rows=rows,
        marks=len(data),
        hidden=hidden,
        note="People whose 24 (72) hours have not passed and who were not tried yet are left "
        "out until they have.",
    )


def supplies_by_month(
    months: Sequence[str], kits: Mapping[str, Row], strips: Mapping[str, Row]
) -> Chart:
    """Naloxone kits and fentanyl test strips given out per month, as paired bars."""
    series = (("Naloxone kits", kits), ("Test strips", strips))
    data = [
        {"month": m, "item": name, "n": rows[m]["value"]}
        for name, rows in series
        for m in months
        if _drawn(rows.get(m)) and rows[m]["value"] > 0
    ]
    hidden = _hidden([rows.get(m) for _n, rows in series for m in months])
    summary = "Naloxone kits and fentanyl test strips peers gave out each month" + (
        f", {months[0]} to {months[-1]}." if months else "."
    )
    summary += _hidden_sentence(hidden)
    spec = _spec(
        summary,
        data,
        width=WIDTH,
        height=200,
        mark={"type": "bar"},
        encoding={
            "x": {
                "field": "month",
                "type": "ordinal",
                "title": None,
                "scale": {"domain": list(months)},
                "axis": {"labelAngle": 0, "labelOverlap": True},
            },
            "xOffset": {"field": "item", "type": "nominal", "sort": [n for n, _r in series]},
            "y": {"field": "n", "type": "quantitative", "title": "Given out"},
            "color": {
                "field": "item",
                "type": "nominal",
                "scale": {"domain": [n for n, _r in series], "range": ["#c0392b", "#1f5f8b"]},
            },
        },
    )
    rows = tuple((m, _display(kits.get(m)), _display(strips.get(m))) for m in months)
    return Chart(
        id="supplies",
        title="Naloxone and test strips",
        summary=summary,
        spec=spec,
        columns=("Month", "Naloxone kits", "Test strips"),
        rows=rows,
        marks=len(data),
        hidden=hidden,
    )


def counties_heat_map(
    months: Sequence[str],
    counties: Sequence[str],
    cells: Mapping[tuple[str, str], Row],
    totals: Mapping[str, Row],
) -> Chart:
    """Overdoses per county and month as a table of shaded cells; a hidden cell is grey and
    shows its published display."""
    data: list[dict[str, Any]] = []
    for county in counties:
        for month in months:
            row = cells.get((month, county))
            drawn = _drawn(row)
            data.append(
                {
                    "county": county,
                    "month": month,
                    "n": row["value"] if drawn and row else None,
                    "display": _display(row),
                    "shown": drawn,
                }
            )
    hidden = _hidden([cells.get((m, c)) for c in counties for m in months])
    shown = [(c, totals[c]["value"]) for c in counties if _drawn(totals.get(c))]
    summary = "Overdoses reported per county and month; the darker the cell, the more."
    if shown:
        county, most = max(shown, key=lambda t: (t[1], t[0]))
        summary += f" The most in the period: {county} ({most:g})."
    summary += _hidden_sentence(hidden).replace("not drawn", "shown grey")
    most_in_a_cell = max((d["n"] for d in data if d["n"] is not None), default=0)
    x = {
        "field": "month",
        "type": "ordinal",
        "title": None,
        "sort": list(months),
        "axis": {"orient": "top", "labelAngle": 0, "labelOverlap": True},
    }
    y = {"field": "county", "type": "ordinal", "title": None, "sort": list(counties)}
    spec = _spec(
        summary,
        data,
        width={"step": max(36, min(64, WIDTH // max(len(months), 1)))},
        height={"step": 22},
        layer=[
            {
                "transform": [{"filter": "datum.shown"}],
                "mark": {"type": "rect", "stroke": "white"},
                "encoding": {
                    "x": x,
                    "y": y,
                    "color": {
                        "field": "n",
                        "type": "quantitative",
                        "title": "Overdoses",
                        "scale": {"scheme": "oranges", "domainMin": 0},
                    },
                },
            },
            {
                "transform": [{"filter": "!datum.shown"}],
                "mark": {"type": "rect", "stroke": "white", "color": "#d9d9d9"},
                "encoding": {"x": x, "y": y},
            },
            {
                "mark": {"type": "text", "fontSize": 11},
                "encoding": {
                    "x": x,
                    "y": y,
                    "text": {"field": "display"},
                    "color": {
                        "condition": {
                            "test": f"datum.n !== null && datum.n > {most_in_a_cell * 0.6}",
                            "value": "white",
                        },
                        "value": "#222",
                    },
                },
            },
        ],
    )
    rows = tuple(
        (c, *(_display(cells.get((m, c))) for m in months), _display(totals.get(c)))
        for c in counties
    )
    return Chart(
        id="counties",
        title="Counties",
        summary=summary,
        spec=spec,
        columns=("County", *months, "Period"),
        rows=rows,
        marks=len(data),
        hidden=hidden,
    )
