"""The reporting API: who may read what, the answer's shape, suppression by default, errors in
the project's shape, and the exports (CSV, XLSX, the quarterly funder report)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from openpyxl import load_workbook

from services.reporting.metrics import METRICS
from tests.reporting_world import History, World, reporting_world

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
Q1 = ("2025-01-01", "2025-03-31")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with reporting_world(tmp_path, now=NOW) as w:
        h = History()
        start = datetime(2025, 1, 6, 15, tzinfo=UTC)
        for i in range(14):  # Guilford: 14 overdoses; Forsyth: 3; Wake: 12
            episode = h.overdose(at=start + timedelta(days=i), county="Guilford")
            h.attempt(episode, at=start + timedelta(days=i, hours=2), outcome="reached")
            h.services(episode, at=start + timedelta(days=i, hours=3), naloxone=1)
        for i in range(3):
            h.overdose(at=start + timedelta(days=20 + i), county="Forsyth County")
        for i in range(12):
            h.overdose(at=start + timedelta(days=40 + i), county="WAKE")
        h.overdose(at=start + timedelta(days=30), county="Other")
        await w.deliver(h.envelopes)
        yield w


async def test_definitions_list_every_metric_with_its_version(world: World) -> None:
    r = await world.client.get("/v1/metrics/definitions", headers=world.auth("analyst"))
    assert r.status_code == 200
    body = r.json()
    assert [d["id"] for d in body] == [m.id for m in METRICS]
    for d in body:
        assert {"id", "version", "title", "definition", "unit"} <= set(d)
        assert d["unit"] in ("count", "rate", "hours")
    ids = {d["id"] for d in body}
    assert {
        "overdoses_reported",
        "people_referred",
        "consent_declined",
        "people_attempted",
        "people_reached",
        "first_attempt_within_24h",
        "median_hours_to_first_attempt",
        "in_person_visits_completed",
        "naloxone_kits_distributed",
        "test_strips_distributed",
        "referrals_made",
        "referrals_care_started",
        "do_not_contact_requests",
        "repeat_overdose_30d",
        "reports_received_late",
        "overdose_deaths_reported",
    } <= ids


@pytest.mark.parametrize("role", ["peer", "deputy"])
async def test_peers_and_deputies_read_no_figures(world: World, role: str) -> None:
    for path in ("/v1/metrics/definitions", "/v1/metrics", "/v1/exports/metrics.csv"):
        r = await world.client.get(
            path, params={"from": Q1[0], "to": Q1[1]}, headers=world.auth(role)
        )
        assert r.status_code == 403, path
        assert r.json()["error"]["code"] == "forbidden_role"


async def test_no_token_no_figures(world: World) -> None:
    r = await world.client.get("/v1/metrics", params={"from": Q1[0], "to": Q1[1]})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_token"


async def test_the_answer_has_the_published_shape_and_is_suppressed(world: World) -> None:
    body = await world.metrics(*Q1, by=["county"])
    assert {"program", "from", "to", "rows"} <= set(body)
    assert (body["program"], body["from"], body["to"], body["view"]) == (
        "demo",
        "2025-01-01",
        "2025-03-31",
        "published",
    )
    for row in body["rows"]:
        assert {
            "metric",
            "version",
            "group",
            "value",
            "numerator",
            "denominator",
            "suppressed",
            "display",
        } <= set(row)
    overdoses = {
        r["group"]["county"]: r for r in body["rows"] if r["metric"] == "overdoses_reported"
    }
    assert list(overdoses) == ["Forsyth", "Guilford", "Other", "Wake"]
    assert overdoses["Guilford"]["value"] == 14
    assert overdoses["Wake"]["display"] == "12"
    forsyth, other = overdoses["Forsyth"], overdoses["Other"]
    assert (forsyth["value"], forsyth["suppressed"], forsyth["display"]) == (None, True, "<10")
    assert (other["value"], other["suppressed"], other["display"]) == (None, True, "<10")
    # The total (30) minus Guilford and Wake leaves 4 for the two small counties together:
    # neither can be worked out alone.
    total = await world.metrics(*Q1)
    (row,) = [r for r in total["rows"] if r["metric"] == "overdoses_reported"]
    assert (row["value"], row["group"]) == (30, {})
    rate = next(r for r in body["rows"] if r["metric"] == "reach_rate")
    assert rate["group"] == {"county": "Forsyth"}
    assert rate["value"] is None  # 0 of 0


async def test_team_leads_may_see_the_internal_view_marked_internal(world: World) -> None:
    body = await world.metrics(*Q1, by=["county"], view="internal", role="team_lead")
    assert body["view"] == "internal"
    forsyth = next(
        r
        for r in body["rows"]
        if r["metric"] == "overdoses_reported" and r["group"] == {"county": "Forsyth"}
    )
    assert (forsyth["value"], forsyth["suppressed"], forsyth["display"]) == (3, False, "3")
    admin = await world.metrics(*Q1, view="internal", role="admin")
    assert admin["view"] == "internal"


async def test_analysts_never_get_the_internal_view(world: World) -> None:
    r = await world.client.get(
        "/v1/metrics",
        params={"from": Q1[0], "to": Q1[1], "view": "internal"},
        headers=world.auth("analyst"),
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "internal_view_forbidden"
    r = await world.client.get(
        "/v1/exports/metrics.csv",
        params={"from": Q1[0], "to": Q1[1], "view": "internal"},
        headers=world.auth("analyst"),
    )
    assert r.status_code == 403


async def test_figures_are_the_callers_programs_only(world: World) -> None:
    r = await world.client.get(
        "/v1/metrics",
        params={"from": Q1[0], "to": Q1[1], "view": "internal"},
        headers=world.auth("team_lead", program="elsewhere"),
    )
    assert r.status_code == 200
    body = r.json()
    assert body["program"] == "elsewhere"
    assert all(not row["value"] for row in body["rows"])


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"from": "2025-03-01", "to": "2025-01-01"}, 422, "invalid_range"),
        ({"from": "2025-01-01", "to": "2025-01-31", "by": "galaxy"}, 422, "invalid_breakdown"),
        ({"from": "2025-01-01", "to": "2025-01-31", "by": "month,week"}, 422, "invalid_breakdown"),
        (
            {"from": "2025-01-01", "to": "2025-01-31", "by": "county,source,partner"},
            422,
            "invalid_breakdown",
        ),
        ({"from": "2020-01-01", "to": "2025-01-31"}, 422, "range_too_large"),
        ({"from": "2024-01-01", "to": "2025-06-30", "by": "day"}, 422, "range_too_large"),
        ({"from": "2025-01-01"}, 422, "validation_error"),
        ({"from": "yesterday", "to": "2025-01-31"}, 422, "validation_error"),
        ({"from": "2025-01-01", "to": "2025-01-31", "view": "raw"}, 422, "validation_error"),
    ],
)
async def test_bad_questions_get_the_projects_error_shape(
    world: World, params: dict[str, str], status: int, code: str
) -> None:
    r = await world.client.get("/v1/metrics", params=params, headers=world.auth("team_lead"))
    assert r.status_code == status
    error = r.json()["error"]
    assert error["code"] == code
    assert error["message"]


async def test_a_two_way_breakdown(world: World) -> None:
    body = await world.metrics(*Q1, by=["month", "county"])
    groups = {
        tuple(r["group"].values()) for r in body["rows"] if r["metric"] == "overdoses_reported"
    }
    assert len(groups) == 3 * 4
    assert ("2025-01", "Guilford") in groups
    comma = await world.metrics(*Q1, by=["month,county"])
    assert comma["rows"] == body["rows"]


async def test_metrics_export_as_csv(world: World) -> None:
    r = await world.client.get(
        "/v1/exports/metrics.csv",
        params={"from": Q1[0], "to": Q1[1], "by": "county"},
        headers=world.auth("analyst"),
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert (
        r.headers["content-disposition"]
        == 'attachment; filename="portline_demo_2025-01-01_2025-03-31_by-county_metrics.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(r.text)))
    forsyth = next(
        x for x in rows if x["metric"] == "overdoses_reported" and x["county"] == "Forsyth"
    )
    assert (forsyth["value"], forsyth["suppressed"], forsyth["display"]) == ("", "true", "<10")
    assert forsyth["version"] == "1"


async def test_metrics_export_as_xlsx_has_definitions_and_a_suppression_note(
    world: World,
) -> None:
    r = await world.client.get(
        "/v1/exports/metrics.xlsx",
        params={"from": Q1[0], "to": Q1[1], "by": "month", "view": "internal"},
        headers=world.auth("team_lead"),
    )
    assert r.status_code == 200
    assert "INTERNAL" in r.headers["content-disposition"]
    book = load_workbook(io.BytesIO(r.content), read_only=True)
    assert book.sheetnames == ["Figures", "Definitions", "Suppression"]
    definitions = list(book["Definitions"].iter_rows(values_only=True))
    assert definitions[0][:2] == ("metric", "version")
    assert {row[0] for row in definitions[1:]} == {m.id for m in METRICS}
    note = [row[0] for row in book["Suppression"].iter_rows(values_only=True) if row]
    assert any("NOT FOR PUBLICATION" in str(line) for line in note)


async def test_the_quarterly_funder_report(world: World) -> None:
    r = await world.client.get(
        "/v1/exports/quarterly.csv", params={"quarter": "2025-Q1"}, headers=world.auth("analyst")
    )
    assert r.status_code == 200
    assert "portline_demo_2025-Q1_funder-report.csv" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["description", "count", "numerator", "denominator", "percent"]
    by_description = {row[0]: row for row in rows[1:]}
    assert by_description["Overdoses reported"][1] == "30"
    assert by_description["Naloxone kits distributed"][1] == "14"
    reach = next(v for k, v in by_description.items() if k.startswith("Share of people attempted"))
    assert reach[2:] == ["14", "14", "100.0%"]
    assert any(k.startswith("Referrals made: housing") for k in by_description)

    xlsx = await world.client.get(
        "/v1/exports/quarterly.xlsx", params={"quarter": "2025-q1"}, headers=world.auth("admin")
    )
    assert xlsx.status_code == 200
    book = load_workbook(io.BytesIO(xlsx.content), read_only=True)
    assert book.sheetnames == ["Report", "Definitions", "Suppression"]
    header = next(book["Report"].iter_rows(values_only=True))
    assert header == ("description", "count", "numerator", "denominator", "percent")


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/v1/exports/nothing.csv", {}, 404, "unknown_export"),
        ("/v1/exports/quarterly.csv", {"quarter": "2025-Q5"}, 422, "invalid_quarter"),
        ("/v1/exports/quarterly.xlsx", {}, 422, "invalid_quarter"),
        ("/v1/exports/metrics.csv", {"from": "2025-01-01"}, 422, "range_required"),
        ("/v1/exports/metrics.pdf", {}, 404, "not_found"),
    ],
)
async def test_bad_exports(
    world: World, path: str, params: dict[str, str], status: int, code: str
) -> None:
    r = await world.client.get(path, params=params, headers=world.auth("analyst"))
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


async def test_the_openapi_document_names_the_roles(world: World) -> None:
    r = await world.client.get("/openapi.json")
    operation = r.json()["paths"]["/v1/metrics"]["get"]
    assert operation["x-roles"] == ["analyst", "team_lead", "admin"]
