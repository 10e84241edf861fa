"""Every metric on small histories whose figures are worked out by hand, including the
awkward ones: an EMS and an ED report of one overdose, a repeat overdose, an A08 revision, a
declined person, do-not-contact, late reports, and follow-up windows that have not passed.

Histories are written as the services would publish them (tests/reporting_world.py) and go
through the consumer's inbox and batch handler. The clock is a ManualClock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.reporting.metrics import METRICS
from shared.events import Consent
from tests.reporting_world import History, Person, World, reporting_world

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
JAN = ("2025-01-01", "2025-01-31")
H = timedelta(hours=1)
D = timedelta(days=1)


def t(day: int, hour: int = 15, month: int = 1) -> datetime:
    return datetime(2025, month, day, hour, tzinfo=UTC)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with reporting_world(tmp_path, now=NOW) as w:
        yield w


def values(figures: dict[str, dict[str, Any]], *ids: str) -> dict[str, Any]:
    return {i: figures[i]["value"] for i in ids}


def rate(figures: dict[str, dict[str, Any]], metric: str) -> tuple[int, int]:
    row = figures[metric]
    return row["numerator"], row["denominator"]


async def test_every_metric_on_a_small_history(world: World) -> None:
    h = History()
    alex = Person()
    first = h.overdose(alex, at=t(10))  # EMS at 10:00 New York time
    ed = h.also_reported(first)  # ...and the ED: one overdose, two reports
    h.attempt(first, at=t(10) + 3 * H)  # first attempt after 3 h
    h.attempt(first, at=t(10) + 20 * H, outcome="reached")
    h.services(first, at=t(10) + 21 * H, naloxone=2, strips=5)
    h.referral(first, at=t(10) + 21 * H, warm=True, care_started_at=t(13))
    h.overdose(alex, at=t(25))  # a repeat overdose 15 days later: not attempted
    h.revise(ed, revision=2)  # an A08: the same report again
    h.overdose(at=t(12), consent=Consent.DECLINED)
    late = h.overdose(at=t(15), received_at=t(20))  # 5 days late: windows from receipt
    h.attempt(late, at=t(20) + 30 * H)  # 30 h after the receipt
    h.do_not_contact(late, at=t(20) + 31 * H)
    h.report(at=t(18), deidentified=True)
    h.overdose(at=t(20), fatal=True)
    h.overdose(at=t(20, month=5))  # 12 days before now: 24 h passed, 30 days not
    await world.deliver(h.envelopes)

    f = await world.figures("2025-01-01", "2025-05-31")

    assert set(f) == {m.id for m in METRICS}
    assert values(
        f,
        "overdoses_reported",
        "overdose_deaths_reported",
        "reports_received",
        "reports_received_late",
        "people_referred",
        "consent_declined",
        "people_with_outreach_task",
        "people_attempted",
        "people_reached",
        "people_engaged",
        "people_declined_outreach",
        "do_not_contact_requests",
        "in_person_visits_completed",
        "naloxone_kits_distributed",
        "test_strips_distributed",
        "referrals_made",
        "referrals_warm_handoff",
        "referrals_care_started",
    ) == {
        "overdoses_reported": 6,  # alex twice, declined, late, de-identified, May
        "overdose_deaths_reported": 1,
        "reports_received": 8,  # alex: EMS, ED, EMS again; five others; the A08 is not new
        "reports_received_late": 1,
        "people_referred": 4,  # alex, declined, late, May: not the de-identified, not the dead
        "consent_declined": 1,
        "people_with_outreach_task": 3,  # alex, late, May
        "people_attempted": 2,
        "people_reached": 1,
        "people_engaged": 1,
        "people_declined_outreach": 0,
        "do_not_contact_requests": 1,
        "in_person_visits_completed": 0,
        "naloxone_kits_distributed": 2,
        "test_strips_distributed": 5,
        "referrals_made": 1,
        "referrals_warm_handoff": 1,
        "referrals_care_started": 1,
    }
    assert rate(f, "attempt_rate") == (2, 3)
    assert rate(f, "reach_rate") == (1, 2)
    assert rate(f, "engagement_rate") == (1, 1)
    # 24 h: alex (3 h) of alex, late (30 h after receipt) and May (never, 24 h passed)
    assert rate(f, "first_attempt_within_24h") == (1, 3)
    assert rate(f, "first_attempt_within_72h") == (2, 3)
    assert f["first_attempt_within_24h"]["value"] == pytest.approx(0.3333)
    assert f["median_hours_to_first_attempt"]["value"] == 16.5  # of 3 h and 30 h
    assert f["median_hours_to_first_attempt"]["denominator"] == 2
    # 30 days passed for alex, declined and late (not May); alex overdosed again in 15 days
    assert rate(f, "repeat_overdose_30d") == (1, 3)
    assert rate(f, "repeat_overdose_90d") == (1, 3)
    # lags: 0.5 h for six reports, 2 h for the ED, 120 h for the late one
    assert f["median_hours_report_lag"]["value"] == 0.5
    assert f["median_hours_report_lag"]["denominator"] == 8
    # the services metrics count hot-spot distribution since v2 (docs/reporting.md)
    services = {"naloxone_kits_distributed", "test_strips_distributed"}
    assert all(row["version"] == (2 if m in services else 1) for m, row in f.items())


async def test_an_ems_and_an_ed_report_of_one_overdose_are_one_overdose(world: World) -> None:
    h = History()
    episode = h.overdose(at=t(5))
    h.also_reported(episode, source="ed", org="demo-hospital")
    await world.deliver(h.envelopes)

    f = await world.figures(*JAN)
    assert values(f, "overdoses_reported", "people_referred", "reports_received") == {
        "overdoses_reported": 1,
        "people_referred": 1,
        "reports_received": 2,
    }
    by_source = await world.metrics(*JAN, by=["source"], view="internal", role="team_lead")
    overdoses = {
        r["group"]["source"]: r["value"]
        for r in by_source["rows"]
        if r["metric"] == "overdoses_reported"
    }
    reports = {
        r["group"]["source"]: r["value"]
        for r in by_source["rows"]
        if r["metric"] == "reports_received"
    }
    assert overdoses == {"ed": 0, "ems": 1}  # counted under the report that opened it
    assert reports == {"ed": 1, "ems": 1}


async def test_a_repeat_overdose_is_two_overdoses_of_one_person(world: World) -> None:
    h = History()
    sam = Person()
    h.overdose(sam, at=t(3))
    h.overdose(sam, at=t(3) + 29 * D)  # within 30 days
    kim = Person()
    h.overdose(kim, at=t(4))
    h.overdose(kim, at=t(4) + 45 * D)  # within 90 days, not 30
    await world.deliver(h.envelopes)

    f = await world.figures("2025-01-01", "2025-03-31")
    assert values(f, "overdoses_reported", "people_referred") == {
        "overdoses_reported": 4,
        "people_referred": 2,
    }
    assert rate(f, "repeat_overdose_30d") == (1, 2)
    assert rate(f, "repeat_overdose_90d") == (2, 2)
    by_month = await world.metrics(
        "2025-01-01", "2025-03-31", by=["month"], view="internal", role="team_lead"
    )
    people = {
        r["group"]["month"]: r["value"]
        for r in by_month["rows"]
        if r["metric"] == "people_referred"
    }
    assert people == {"2025-01": 2, "2025-02": 2, "2025-03": 0}  # once per month each


async def test_an_a08_revision_is_the_same_report_whatever_the_order(world: World) -> None:
    h = History()
    episode = h.overdose(at=t(7))
    ed = h.also_reported(episode)
    h.revise(ed, revision=2, location={"county": "Forsyth", "state": "NC", "address": None})
    # The revision first, then the original: the revision still wins.
    revised, original = (
        h.envelopes[-1],
        next(e for e in h.envelopes if e.data.get("report_id") == str(ed.report_id)),
    )
    rest = [e for e in h.envelopes if e not in (revised, original)]
    await world.deliver([*rest, revised, original])

    f = await world.figures(*JAN)
    assert values(f, "reports_received", "overdoses_reported") == {
        "reports_received": 2,
        "overdoses_reported": 1,
    }
    by_county = await world.metrics(*JAN, by=["county"], view="internal", role="team_lead")
    reports = {
        r["group"]["county"]: r["value"]
        for r in by_county["rows"]
        if r["metric"] == "reports_received"
    }
    assert reports == {"Forsyth": 1, "Guilford": 1}


async def test_a_person_who_declined_at_the_scene_gets_no_outreach(world: World) -> None:
    h = History()
    h.overdose(at=t(9), consent=Consent.DECLINED)
    h.report(at=t(9, 20), consent=Consent.DECLINED, deidentified=True)  # no name given either
    await world.deliver(h.envelopes)

    f = await world.figures(*JAN)
    assert values(
        f, "consent_declined", "overdoses_reported", "people_referred", "people_with_outreach_task"
    ) == {
        "consent_declined": 2,
        "overdoses_reported": 2,
        "people_referred": 1,
        "people_with_outreach_task": 0,
    }
    assert rate(f, "first_attempt_within_24h") == (0, 0)
    assert f["first_attempt_within_24h"]["value"] is None
    assert f["first_attempt_within_24h"]["display"] == "n/a"


async def test_declines_and_do_not_contact(world: World) -> None:
    h = History()
    first = h.overdose(at=t(2))
    h.attempt(first, at=t(2) + 2 * H, outcome="declined")
    second = h.overdose(at=t(3))
    h.attempt(second, at=t(3) + 2 * H, outcome="reached")
    h.decline(second, at=t(3) + 3 * H)
    third = h.overdose(at=t(4))
    h.do_not_contact(third, at=t(4) + 1 * H)
    await world.deliver(h.envelopes)

    f = await world.figures(*JAN)
    assert values(f, "people_declined_outreach", "do_not_contact_requests", "people_engaged") == {
        "people_declined_outreach": 2,
        "do_not_contact_requests": 1,
        "people_engaged": 0,
    }


async def test_late_reports(world: World) -> None:
    h = History()
    # The ED's codes came 4 days after the overdose: late; its task counts from the receipt.
    late = h.overdose(at=t(5), received_at=t(9), source="ed", org="demo-hospital")
    h.attempt(late, at=t(9) + 5 * H)
    on_time = h.overdose(at=t(6))
    h.also_reported(on_time, received_at=t(6) + 80 * H)  # the ED's report of it came late
    h.report(at=t(7), received_at=t(7) + 100 * H, deidentified=True)  # late, no name
    h.report(at=t(8), received_at=t(8) + 10 * H, deidentified=True)  # on time, no name
    await world.deliver(h.envelopes)

    f = await world.figures(*JAN)
    assert f["reports_received_late"]["value"] == 3
    assert f["reports_received"]["value"] == 5
    assert f["median_hours_to_first_attempt"]["value"] == 5.0  # from the receipt
    assert rate(f, "first_attempt_within_24h") == (1, 2)  # the on-time one was not attempted
    by_partner = await world.metrics(*JAN, by=["partner"], view="internal", role="team_lead")
    lag = {
        r["group"]["partner"]: r["value"]
        for r in by_partner["rows"]
        if r["metric"] == "median_hours_report_lag"
    }
    assert lag == {"demo-ems": 10.0, "demo-hospital": 88.0}  # (0.5, 10, 100) and (96, 80)


async def test_follow_up_windows_that_have_not_passed_are_left_out(world: World) -> None:
    world.clock.set(t(10) + 2 * H)
    h = History()
    recent = h.overdose(at=t(10))  # 2 h ago: neither its 24 h nor its 30 days have passed
    await world.deliver(h.envelopes)

    f = await world.figures(*JAN)
    assert rate(f, "first_attempt_within_24h") == (0, 0)
    assert rate(f, "repeat_overdose_30d") == (0, 0)

    world.clock.advance(23 * H)  # 25 h after: the 24 h have passed without an attempt
    f = await world.figures(*JAN)
    assert rate(f, "first_attempt_within_24h") == (0, 1)
    assert rate(f, "first_attempt_within_72h") == (0, 0)

    h.attempt(recent, at=t(10) + 26 * H)
    await world.deliver(h.envelopes[-1:])
    world.clock.set(t(10) + 31 * D)  # 30 days passed with no other overdose
    f = await world.figures(*JAN)
    assert rate(f, "first_attempt_within_72h") == (1, 1)
    assert rate(f, "repeat_overdose_30d") == (0, 1)


async def test_deaths_are_counted_apart_from_overdoses(world: World) -> None:
    h = History()
    h.overdose(at=t(11), fatal=True)  # dead at the scene
    survived = h.overdose(at=t(12))
    h.also_reported(survived, fatal=True)  # expired in the ED: a later record of death
    h.report(at=t(13), fatal=True, deidentified=True)
    await world.deliver(h.envelopes)

    f = await world.figures(*JAN)
    assert values(f, "overdoses_reported", "overdose_deaths_reported", "people_referred") == {
        "overdoses_reported": 0,
        "overdose_deaths_reported": 3,
        "people_referred": 0,
    }


async def test_community_referrals_count_by_their_referrer(world: World) -> None:
    h = History()
    h.community(at=t(14), referrer="syringe_services")  # an overdose, no name
    h.community(at=t(15), referrer="jail_release", overdose=False)  # a referral, no overdose
    await world.deliver(h.envelopes)

    f = await world.figures(*JAN)
    assert values(f, "overdoses_reported", "reports_received") == {
        "overdoses_reported": 1,
        "reports_received": 2,
    }
    by = await world.metrics(*JAN, by=["source"], view="internal", role="team_lead")
    reports = {
        r["group"]["source"]: r["value"] for r in by["rows"] if r["metric"] == "reports_received"
    }
    assert reports == {"community": 2}


async def test_services_referrals_and_visits(world: World) -> None:
    h = History()
    ep = h.overdose(at=t(16))
    h.attempt(ep, at=t(16) + 2 * H)
    h.visit(ep, at=t(16) + 50 * H, reached=True)
    h.services(ep, at=t(16) + 50 * H, naloxone=1, strips=10)
    h.services(ep, at=t(20), naloxone=3)  # a later visit, no task: still this overdose
    h.referral(ep, at=t(16) + 50 * H, kind="moud_methadone", care_started_at=t(19))
    h.referral(ep, at=t(16) + 51 * H, kind="housing", warm=True)
    other = h.overdose(at=t(17))
    h.visit(other, at=t(17) + 50 * H, reached=False)
    await world.deliver(h.envelopes)

    f = await world.figures(*JAN)
    assert values(
        f,
        "in_person_visits_completed",
        "naloxone_kits_distributed",
        "test_strips_distributed",
        "referrals_made",
        "referrals_warm_handoff",
        "referrals_care_started",
        "people_reached",
        "people_attempted",
        "people_engaged",
    ) == {
        "in_person_visits_completed": 2,
        "naloxone_kits_distributed": 4,
        "test_strips_distributed": 10,
        "referrals_made": 2,
        "referrals_warm_handoff": 1,
        "referrals_care_started": 1,
        "people_reached": 1,
        "people_attempted": 2,
        "people_engaged": 1,
    }
    by_kind = await world.metrics(*JAN, by=["referral_kind"], view="internal", role="team_lead")
    assert {r["metric"] for r in by_kind["rows"]} == {
        "referrals_made",
        "referrals_warm_handoff",
        "referrals_care_started",
    }
    made = {
        r["group"]["referral_kind"]: r["value"]
        for r in by_kind["rows"]
        if r["metric"] == "referrals_made" and r["value"]
    }
    assert made == {"housing": 1, "moud_methadone": 1}


async def test_work_without_a_task_counts_under_the_latest_overdose_before_it(
    world: World,
) -> None:
    h = History()
    pat = Person()
    january = h.overdose(pat, at=t(5))
    h.contact(january, at=t(6))  # the person called in
    h.services(january, at=t(6), naloxone=1)
    h.overdose(pat, at=t(5, month=2))
    h.services(january, at=t(6, month=2), naloxone=4)  # after February's overdose
    await world.deliver(h.envelopes)

    by_month = await world.metrics(
        "2025-01-01", "2025-02-28", by=["month"], view="internal", role="team_lead"
    )
    kits = {
        r["group"]["month"]: r["value"]
        for r in by_month["rows"]
        if r["metric"] == "naloxone_kits_distributed"
    }
    reached = {
        r["group"]["month"]: r["value"] for r in by_month["rows"] if r["metric"] == "people_reached"
    }
    assert kits == {"2025-01": 1, "2025-02": 4}
    assert reached == {"2025-01": 1, "2025-02": 0}


async def test_periods_are_on_the_programs_clock(world: World) -> None:
    h = History()
    h.overdose(at=datetime(2025, 4, 1, 2, tzinfo=UTC))  # 31 March, 22:00 in New York
    await world.deliver(h.envelopes)

    for by, label in (
        ("day", "2025-03-31"),
        ("week", "2025-W14"),
        ("month", "2025-03"),
        ("quarter", "2025-Q1"),
    ):
        body = await world.metrics(
            "2025-03-30", "2025-04-01", by=[by], view="internal", role="team_lead"
        )
        found = [
            r["group"][by]
            for r in body["rows"]
            if r["metric"] == "overdoses_reported" and r["value"] == 1
        ]
        assert found == [label], by
    april = await world.figures("2025-04-01", "2025-04-30")
    assert april["overdoses_reported"]["value"] == 0


async def test_a_programs_own_time_zone(tmp_path: Path) -> None:
    programs = tmp_path / "reporting-programs.toml"
    programs.write_text('[programs.demo]\ntimezone = "America/Los_Angeles"\n')
    async with reporting_world(tmp_path, now=NOW, reporting_programs=programs) as world:
        h = History()
        h.overdose(at=datetime(2025, 4, 1, 5, tzinfo=UTC))  # still 31 March in Los Angeles
        await world.deliver(h.envelopes)
        march = await world.figures("2025-03-31", "2025-03-31")
        assert march["overdoses_reported"]["value"] == 1


async def test_delivering_events_twice_changes_nothing(world: World) -> None:
    h = History()
    ep = h.overdose(at=t(8))
    h.attempt(ep, at=t(8) + H, outcome="reached")
    h.services(ep, at=t(8) + H, naloxone=2)
    await world.deliver(h.envelopes)
    once = await world.figures(*JAN)
    await world.deliver(h.envelopes, batch=7)  # redelivered, in other batches
    assert await world.figures(*JAN) == once
    assert once["naloxone_kits_distributed"]["value"] == 2
