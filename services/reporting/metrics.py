"""The program's metrics, as versioned code: what each figure means and how it is computed.

Every figure PORTline publishes carries its metric's id and version. Changing what a metric
counts (not just its wording) bumps its version, so a funder comparing two reports can see
that a definition moved. `docs/reporting.md` explains each one in a funder's words; a test
keeps that page and this module in step.

Figures select overdoses by their incident date on the program's clock: the outreach figures
are what happened after the overdoses of the period (a cohort), however long after.

Each metric is computed from measures of one basis (`query.py`):

- `episodes`: one row per overdose episode (an EMS and an ED report of one overdose are one
  episode; a report without a name or phone is an episode of its own), with what happened
  after it. "People" are distinct people among those episodes.
- `reports`: one row per report a partner sent (revisions of it are the same report).
- `referrals`: one row per referral, counted under the episode it followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["METRICS", "METRICS_BY_ID", "Basis", "Metric", "Unit"]

Unit = Literal["count", "rate", "hours"]
Basis = Literal["episodes", "reports", "referrals"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    id: str
    version: int
    title: str
    definition: str
    """One sentence a funder can read."""
    unit: Unit
    computation: str
    """How it is computed, for an analyst checking a figure."""
    basis: Basis
    measure: str | None = None
    """Counts: the measure counted. Hours: the measure whose median is taken."""
    numerator: str | None = None
    """Rates: the numerator's measure (hours: the measure counting the values)."""
    denominator: str | None = None
    numerator_label: str | None = None
    denominator_label: str | None = None

    def __post_init__(self) -> None:
        given = (bool(self.measure), bool(self.numerator), bool(self.denominator))
        expected = {
            "count": (True, False, False),
            "rate": (False, True, True),
            "hours": (True, False, True),
        }[self.unit]
        if given != expected:
            raise ValueError(f"metric {self.id}: a {self.unit} needs other measures")
        if self.unit == "rate" and not (self.numerator_label and self.denominator_label):
            raise ValueError(f"metric {self.id}: a rate says what it is of")


METRICS: tuple[Metric, ...] = (
    # -- overdoses and reports ----------------------------------------------------------------
    Metric(
        id="overdoses_reported",
        version=1,
        title="Overdoses reported",
        definition="Non-fatal overdoses reported to the program, each counted once however many "
        "agencies reported it.",
        unit="count",
        computation="Overdose episodes that were not fatal, by incident date. An EMS report and "
        "an ED report of the same overdose are one episode; reports without a name or phone "
        "count, one episode each; community referrals that were not about an overdose do not.",
        basis="episodes",
        measure="overdoses",
    ),
    Metric(
        id="overdose_deaths_reported",
        version=1,
        title="Overdose deaths reported",
        definition="Overdoses the program learned were fatal, counted apart from the overdoses "
        "reported.",
        unit="count",
        computation="Overdose episodes reported fatal by any source (at the scene, in the ED, in a "
        "later revision, or in a later record of death), by incident date.",
        basis="episodes",
        measure="deaths",
    ),
    Metric(
        id="reports_received",
        version=1,
        title="Reports received",
        definition="Reports of overdoses and referrals the program received from its partners "
        "and the community.",
        unit="count",
        computation="Each report a partner sent (EMS run report, ED visit, law-enforcement "
        "report) or the team entered from the community, counted once however often it was "
        "revised, by the overdose date it gave.",
        basis="reports",
        measure="reports",
    ),
    Metric(
        id="reports_received_late",
        version=1,
        title="Reports received late",
        definition="Reports that reached the program after the window for a first phone call "
        "or text had already closed.",
        unit="count",
        computation="Reports received at or after the close of their remote-contact window "
        "counted from the overdose (72 hours by default): the scheduler's own mark for the "
        "reports it linked, the same rule for reports without a name or phone.",
        basis="reports",
        measure="reports_late",
    ),
    Metric(
        id="median_hours_report_lag",
        version=1,
        title="Median hours from overdose to report",
        definition="How long, at the median, reports took to reach the program after the "
        "overdose; by partner, how timely each partner's feed is.",
        unit="hours",
        computation="The median of (time received - overdose time) over reports; an overdose "
        "time after the receipt counts as the receipt.",
        basis="reports",
        measure="report_lag_hours",
        denominator="reports_with_lag",
    ),
    Metric(
        id="people_referred",
        version=1,
        title="People referred",
        definition="Distinct people referred to the program after a non-fatal overdose or by "
        "the community.",
        unit="count",
        computation="Distinct people with at least one non-fatal episode in the period; a person "
        "reported by EMS and by an ED, or twice, counts once. Reports without a name or phone "
        "name nobody and are not counted here.",
        basis="episodes",
        measure="people_referred",
    ),
    Metric(
        id="consent_declined",
        version=1,
        title="Declined follow-up at the scene",
        definition="Overdoses after which the person said no, at the scene, to a peer "
        "following up; they received naloxone and information instead.",
        unit="count",
        computation="Episodes whose first report recorded that the person declined a peer "
        "follow-up (the scheduler planned no outreach: consent_declined_no_tasks), including "
        "reports without a name or phone.",
        basis="episodes",
        measure="consent_declined",
    ),
    Metric(
        id="repeat_overdose_30d",
        version=1,
        title="Repeat overdose within 30 days",
        definition="Of the people who overdosed in the period at least 30 days ago, the share "
        "who overdosed again within 30 days.",
        unit="rate",
        computation="Right-censored: only overdoses whose 30 days have fully passed count. A "
        "person is in the numerator if another overdose (fatal or not) followed one of theirs "
        "within 30 days.",
        basis="episodes",
        numerator="repeat30_num",
        denominator="repeat30_den",
        numerator_label="People with another overdose within 30 days",
        denominator_label="People with a non-fatal overdose at least 30 days ago",
    ),
    Metric(
        id="repeat_overdose_90d",
        version=1,
        title="Repeat overdose within 90 days",
        definition="Of the people who overdosed in the period at least 90 days ago, the share "
        "who overdosed again within 90 days.",
        unit="rate",
        computation="As repeat_overdose_30d, over 90 days.",
        basis="episodes",
        numerator="repeat90_num",
        denominator="repeat90_den",
        numerator_label="People with another overdose within 90 days",
        denominator_label="People with a non-fatal overdose at least 90 days ago",
    ),
    # -- outreach: the funnel -----------------------------------------------------------------
    Metric(
        id="people_with_outreach_task",
        version=1,
        title="People offered outreach",
        definition="Distinct people the program set out to reach by phone, text or visit.",
        unit="count",
        computation="Distinct people with an episode in the period that got a remote-contact or "
        "in-person-visit task.",
        basis="episodes",
        measure="people_with_task",
    ),
    Metric(
        id="people_attempted",
        version=1,
        title="People the team tried to reach",
        definition="Distinct people a peer tried at least once to reach after their overdose.",
        unit="count",
        computation="Distinct people with a logged attempt (phone, text, visit, family or "
        "friend), a completed visit or a contact after an overdose of the period. Follow-ups "
        "and family support are not attempts.",
        basis="episodes",
        measure="people_attempted",
    ),
    Metric(
        id="attempt_rate",
        version=1,
        title="Share of people offered outreach whom the team tried to reach",
        definition="Of the people the program set out to reach, the share a peer tried to "
        "reach at least once.",
        unit="rate",
        computation="People with an outreach task who were attempted / people with an outreach "
        "task.",
        basis="episodes",
        numerator="people_task_attempted",
        denominator="people_with_task",
        numerator_label="People with an outreach task who were attempted",
        denominator_label="People with an outreach task",
    ),
    Metric(
        id="people_reached",
        version=1,
        title="People reached",
        definition="Distinct people a peer reached: a conversation, by phone, text or in person.",
        unit="count",
        computation="Distinct people with two-way contact after an overdose of the period: an "
        "attempt whose outcome was reached, a contact recorded, or a visit that reached them.",
        basis="episodes",
        measure="people_reached",
    ),
    Metric(
        id="reach_rate",
        version=1,
        title="Share of people attempted who were reached",
        definition="Of the people a peer tried to reach, the share who were reached.",
        unit="rate",
        computation="people_reached / people_attempted (a step of the funnel over the step "
        "before it).",
        basis="episodes",
        numerator="people_reached",
        denominator="people_attempted",
        numerator_label="People reached",
        denominator_label="People attempted",
    ),
    Metric(
        id="people_engaged",
        version=1,
        title="People engaged",
        definition="Distinct people reached who took up help: supplies, a referral, or "
        "outreach that ended with them engaged or in treatment.",
        unit="count",
        computation="People reached whose episode also has services given, a referral made, "
        "or a conclusion of outreach as engaged or in_treatment.",
        basis="episodes",
        measure="people_engaged",
    ),
    Metric(
        id="engagement_rate",
        version=1,
        title="Share of people reached who engaged",
        definition="Of the people reached, the share who took up help.",
        unit="rate",
        computation="people_engaged / people_reached.",
        basis="episodes",
        numerator="people_engaged",
        denominator="people_reached",
        numerator_label="People engaged",
        denominator_label="People reached",
    ),
    Metric(
        id="first_attempt_within_24h",
        version=1,
        title="First attempt within 24 hours",
        definition="Of the people to be called or texted after an overdose, the share a peer "
        "first tried to reach within 24 hours.",
        unit="rate",
        computation="Over people with a remote-contact task: those whose first attempt came "
        "within 24 hours of the time their windows count from (the overdose; for a late report, "
        "its receipt). People whose 24 hours have not yet passed and who were not yet "
        "attempted are left out until they have.",
        basis="episodes",
        numerator="first24_num",
        denominator="first24_den",
        numerator_label="People first attempted within 24 hours",
        denominator_label="People with a remote-contact task",
    ),
    Metric(
        id="first_attempt_within_72h",
        version=1,
        title="First attempt within 72 hours",
        definition="Of the people to be called or texted after an overdose, the share a peer "
        "first tried to reach within 72 hours.",
        unit="rate",
        computation="As first_attempt_within_24h, within 72 hours.",
        basis="episodes",
        numerator="first72_num",
        denominator="first72_den",
        numerator_label="People first attempted within 72 hours",
        denominator_label="People with a remote-contact task",
    ),
    Metric(
        id="median_hours_to_first_attempt",
        version=1,
        title="Median hours to first attempt",
        definition="How long, at the median, people waited after their overdose before a peer "
        "first tried to reach them.",
        unit="hours",
        computation="The median, over episodes with a remote-contact task and an attempt, of "
        "the hours from the time their windows count from (the overdose; for a late report, "
        "its receipt) to the first attempt.",
        basis="episodes",
        measure="first_attempt_hours",
        denominator="first_attempt_n",
    ),
    Metric(
        id="people_declined_outreach",
        version=1,
        title="People who declined outreach",
        definition="Distinct people who, once a peer reached them, said they did not want "
        "outreach; their wish was honoured.",
        unit="count",
        computation="Distinct people with an attempt whose outcome was declined, or a decline "
        "recorded, after an overdose of the period.",
        basis="episodes",
        measure="people_declined_outreach",
    ),
    Metric(
        id="do_not_contact_requests",
        version=1,
        title="Do-not-contact requests",
        definition="Distinct people who asked never to be contacted again; the request is final.",
        unit="count",
        computation="Distinct people with a do-not-contact request after an overdose of the "
        "period.",
        basis="episodes",
        measure="do_not_contact",
    ),
    # -- services and referrals ---------------------------------------------------------------
    Metric(
        id="in_person_visits_completed",
        version=1,
        title="In-person visits completed",
        definition="Visits a peer made in person, whether or not the person was found.",
        unit="count",
        computation="Visits recorded as completed after an overdose of the period.",
        basis="episodes",
        measure="visits_completed",
    ),
    Metric(
        id="naloxone_kits_distributed",
        version=2,
        title="Naloxone kits distributed",
        definition="Naloxone kits peers handed out, to people after their overdose and where "
        "a county's overdoses spiked.",
        unit="count",
        computation="The sum of the naloxone kits in the services recorded after an overdose of "
        "the period (kits, not visits), plus those handed out on hot-spot outreach concluded "
        "in the period (by the conclusion's date and the hot spot's county; not attributed to "
        "a source or partner). v1 counted only the services after an overdose.",
        basis="episodes",
        measure="naloxone_kits",
    ),
    Metric(
        id="test_strips_distributed",
        version=2,
        title="Fentanyl test strips distributed",
        definition="Fentanyl test strips peers handed out, to people after their overdose and "
        "where a county's overdoses spiked.",
        unit="count",
        computation="The sum of the fentanyl test strips in the services recorded after an "
        "overdose of the period (strips, not visits), plus those handed out on hot-spot "
        "outreach concluded in the period (by the conclusion's date and the hot spot's "
        "county; not attributed to a source or partner). v1 counted only the services after "
        "an overdose.",
        basis="episodes",
        measure="test_strips",
    ),
    Metric(
        id="referrals_made",
        version=1,
        title="Referrals made",
        definition="Referrals to treatment and services (medication for opioid use disorder, "
        "detox, treatment, mental health, housing, and others) that peers made.",
        unit="count",
        computation="Referrals made after an overdose of the period; by referral_kind, per kind.",
        basis="referrals",
        measure="referrals",
    ),
    Metric(
        id="referrals_warm_handoff",
        version=1,
        title="Referrals made as warm handoffs",
        definition="Referrals where the peer connected the person to the provider directly.",
        unit="count",
        computation="Referrals made after an overdose of the period and marked warm_handoff.",
        basis="referrals",
        measure="referrals_warm",
    ),
    Metric(
        id="referrals_care_started",
        version=1,
        title="Referrals where care started",
        definition="Referrals after which the person attended their first appointment.",
        unit="count",
        computation="Referrals made after an overdose of the period that reached the status "
        "care_started (the first appointment attended).",
        basis="referrals",
        measure="referrals_care_started",
    ),
)

METRICS_BY_ID: dict[str, Metric] = {m.id: m for m in METRICS}
