from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

import shared.events as events
from shared.envelope import Envelope, EnvelopeError, UnknownEventTypeError, registered_events
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
