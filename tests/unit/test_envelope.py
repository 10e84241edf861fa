from __future__ import annotations

import uuid
from datetime import UTC, datetime
from itertools import pairwise
from typing import Literal, get_args, get_origin

import pytest

import shared.events as events
from shared.envelope import (
    Envelope,
    EnvelopeError,
    Event,
    UnknownEventTypeError,
    latest_event_model,
    registered_events,
)
from shared.topics import ALL_TOPICS

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def sample() -> events.CaseOpened:
    return events.CaseOpened(
        case_id=uuid.uuid4(), program_id="demo", person_id=uuid.uuid4(), opened_at=NOW
    )


def test_envelope_round_trips_with_cloudevents_attributes() -> None:
    event = sample()
    env = Envelope.wrap(event, source="/portline/scheduler", subject=str(event.case_id), time=NOW)
    raw = env.to_bytes()
    back = Envelope.from_bytes(raw)
    assert back.specversion == "1.0"
    assert back.type == "CaseOpened"
    assert back.dataschema == "urn:portline:event:CaseOpened:v1"
    assert back.correlationid == back.id  # a fresh chain starts with itself
    assert back.event() == event


def test_causation_and_correlation_carry_through() -> None:
    env = Envelope.wrap(
        sample(), source="/s", subject="k", time=NOW, correlation_id="c-1", causation_id="e-0"
    )
    assert (env.correlationid, env.causationid) == ("c-1", "e-0")


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        Envelope.wrap(sample(), source="/s", subject="k", time=datetime(2026, 1, 1))


@pytest.mark.parametrize("raw", [b"", b"{}", b"not json", b'{"id": 1}'])
def test_garbage_is_an_envelope_error_that_does_not_echo_the_payload(raw: bytes) -> None:
    with pytest.raises(EnvelopeError) as info:
        Envelope.from_bytes(raw)
    if raw:
        assert raw.decode() not in str(info.value) or raw == b"{}"


def test_unknown_type_is_reported_as_such() -> None:
    env = Envelope.wrap(sample(), source="/s", subject="k", time=NOW)
    forged = env.model_copy(update={"type": "SomethingElse"})
    with pytest.raises(UnknownEventTypeError):
        forged.event()


def test_data_that_breaks_the_schema_is_refused() -> None:
    env = Envelope.wrap(sample(), source="/s", subject="k", time=NOW)
    broken = env.model_copy(update={"data": {**env.data, "case_id": "not-a-uuid"}})
    with pytest.raises(EnvelopeError, match="does not match"):
        broken.event()


def test_every_event_is_past_tense_and_lives_on_a_known_topic() -> None:
    topics = {t.name for t in ALL_TOPICS}
    registry = registered_events()
    assert len(registry) >= 23
    for (name, version), model in registry.items():
        if model.__module__.startswith("tests."):
            continue
        assert model.topic in topics, name
        assert version >= 1
        assert name[0].isupper()
        assert name.endswith(("ed", "Made", "Provided", "Opened", "Due", "Overdue")), name


def test_events_refuse_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        events.CaseOpened.model_validate(
            {**sample().model_dump(), "name": "a person's name must not sneak in"}
        )


def _versions() -> dict[str, list[tuple[int, type[Event]]]]:
    by_type: dict[str, list[tuple[int, type[Event]]]] = {}
    for (name, version), model in sorted(registered_events().items()):
        by_type.setdefault(name, []).append((version, model))
    return by_type


@pytest.mark.parametrize(
    ("name", "versions"), [(n, v) for n, v in _versions().items() if len(v) > 1]
)
def test_a_newer_version_only_adds_fields_each_with_a_default(
    name: str, versions: list[tuple[int, type[Event]]]
) -> None:
    for (_, older), (version, newer) in pairwise(versions):
        old, new = older.model_fields, newer.model_fields
        assert set(old) <= set(new), f"{name} v{version} drops {set(old) - set(new)}"
        for field in old:
            before, after = old[field].annotation, new[field].annotation
            if get_origin(before) is Literal and get_origin(after) is Literal:
                assert set(get_args(before)) <= set(get_args(after)), f"{name}.{field} narrowed"
            else:
                assert after == before, f"{name}.{field} changed type"
        added = [f for f in set(new) - set(old) if new[f].is_required()]
        assert not added, f"{name} v{version} adds required fields {added}"
        assert newer.topic == older.topic


def test_an_older_version_reads_as_the_newest_with_defaults() -> None:
    case_id, task_id, episode_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    opens = datetime(2026, 1, 1, tzinfo=UTC)
    v1 = events.TaskScheduledV1(
        case_id=case_id,
        program_id="demo",
        task_id=task_id,
        episode_id=episode_id,
        kind=events.TaskKind.REMOTE_CONTACT,
        priority=2,
        window_opens_at=opens,
        due_at=opens,
        expires_at=opens,
        policy_version="p",
    )
    raw = Envelope.wrap(v1, source="/t", subject="k", time=opens).to_bytes()
    envelope = Envelope.from_bytes(raw)
    assert (envelope.type, envelope.dataversion) == ("TaskScheduled", 1)
    event = envelope.event()
    assert type(event) is events.TaskScheduled
    assert isinstance(event, events.TaskScheduled)
    assert event.late is False
    assert event.quiet_hours is None
    assert event.task_id == task_id
    assert latest_event_model("TaskScheduled") is events.TaskScheduled
    assert events.TaskScheduled.version == 3


def test_producers_write_the_newest_version() -> None:
    opens = datetime(2026, 1, 1, tzinfo=UTC)
    event = events.ReportLinked(
        case_id=uuid.uuid4(),
        program_id="demo",
        report_id=uuid.uuid4(),
        episode_id=uuid.uuid4(),
        match="exact",
        late=True,
        received_at=opens,
    )
    envelope = Envelope.wrap(event, source="/t", subject="k", time=opens)
    assert envelope.dataversion == 2
    assert envelope.dataschema == "urn:portline:event:ReportLinked:v2"
    assert Envelope.from_bytes(envelope.to_bytes()).event() == event
