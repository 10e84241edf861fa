"""The CloudEvents 1.0 envelope (structured JSON mode) that carries every PORTline event.

Versions: a type's newer version may only *add* fields, each with a default (a test holds every
registered pair to that). Reading an older version therefore yields the newest model, with the
added fields at their defaults, so a consumer handles one model per type however old the event.

Exceptions:

    EnvelopeError            - the bytes are not a PORTline envelope
    └── UnknownEventTypeError - a well-formed envelope whose type/version no model is registered for
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "Envelope",
    "EnvelopeError",
    "Event",
    "UnknownEventTypeError",
    "event_model",
    "latest_event_model",
    "registered_events",
]


class EnvelopeError(ValueError):
    """The payload is not a valid PORTline envelope."""


class UnknownEventTypeError(EnvelopeError):
    """The envelope names an event type and version that no model is registered for."""


_REGISTRY: dict[tuple[str, int], type[Event]] = {}
_LATEST: dict[str, type[Event]] = {}


class Event(BaseModel):
    """Base of every event model: a past-tense fact with a versioned schema and a home topic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    version: ClassVar[int] = 1
    topic: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            return  # an abstract intermediate base
        key = (cls.event_type, cls.version)
        if key in _REGISTRY and _REGISTRY[key].__qualname__ != cls.__qualname__:
            raise TypeError(f"event {key} is registered twice")
        _REGISTRY[key] = cls
        if cls.event_type not in _LATEST or _LATEST[cls.event_type].version < cls.version:
            _LATEST[cls.event_type] = cls

    @classmethod
    def dataschema(cls) -> str:
        return f"urn:portline:event:{cls.event_type}:v{cls.version}"


def event_model(event_type: str, version: int) -> type[Event]:
    try:
        return _REGISTRY[(event_type, version)]
    except KeyError:
        raise UnknownEventTypeError(f"no model for event {event_type} v{version}") from None


def registered_events() -> dict[tuple[str, int], type[Event]]:
    return dict(_REGISTRY)


def latest_event_model(event_type: str) -> type[Event]:
    """The newest registered version of a type: what producers publish and readers get."""
    try:
        return _LATEST[event_type]
    except KeyError:
        raise UnknownEventTypeError(f"no model for event {event_type}") from None


class Envelope(BaseModel):
    """CloudEvents attributes plus PORTline's correlation, causation and schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(description="Unique event id; consumers deduplicate on it.")
    source: str = Field(description="URI of the producing service, e.g. /portline/intake.")
    type: str = Field(description="Past-tense event name, e.g. OverdoseReported.")
    subject: str = Field(description="The person or case key; also the Kafka message key.")
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str
    dataversion: int = Field(ge=1)
    correlationid: str
    causationid: str | None = None
    data: dict[str, Any]

    @classmethod
    def wrap(
        cls,
        event: Event,
        *,
        source: str,
        subject: str,
        time: datetime,
        event_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Envelope:
        eid = event_id or str(uuid.uuid4())
        return cls(
            id=eid,
            source=source,
            type=event.event_type,
            subject=subject,
            time=time,
            dataschema=event.dataschema(),
            dataversion=event.version,
            correlationid=correlation_id or eid,
            causationid=causation_id,
            data=event.model_dump(mode="json"),
        )

    def event(self) -> Event:
        """The typed event inside, as its newest version (older data validates as written,
        then takes the fields added since at their defaults); raises UnknownEventTypeError or
        EnvelopeError."""
        model = event_model(self.type, self.dataversion)
        try:
            event = model.model_validate(self.data)
            latest = _LATEST[self.type]
            if latest is not model:
                event = latest.model_validate(event.model_dump())
            return event
        except ValidationError as exc:
            raise EnvelopeError(
                f"{self.type} v{self.dataversion} data does not match its schema: "
                f"{exc.error_count()} error(s)"
            ) from None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Envelope:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            # Never echo the payload: it may hold sealed or otherwise sensitive values.
            fields = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
            raise EnvelopeError(
                f"not a PORTline envelope (bad fields: {fields or 'body'})"
            ) from None
