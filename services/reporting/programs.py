"""What reporting needs to know of each program: its clock (time zone), its suppression
rules, its spike detectors, and the calendar periods (day, ISO week, month, quarter) of a
moment on that clock.

A program's time zone is, in this order: its entry in the reporting programs file
(`PORTLINE_REPORTING_PROGRAMS`), the `timezone` of its scheduler policy file
(`PORTLINE_SCHEDULER_POLICY_DIR/<program>.toml`, so both services keep one clock), or
`PORTLINE_REPORTING_TIMEZONE`. Facts are stored with their local periods, so changing a
program's time zone takes a rebuild (`portline reporting rebuild`).

A program's spike detectors are NSSP-ESSENCE's EWMA and the ODMAP rule with their published
defaults, unless its entry has a `[programs.<id>.spikes]` table (see `SPIKE_KEYS`).

Exceptions:

    ProgramConfigError - the reporting programs file or a time zone in it is not valid
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.reporting.spikes import EwmaParams, OdmapParams
from shared.settings import Settings

__all__ = [
    "DETECTORS",
    "SPIKE_KEYS",
    "Detector",
    "Periods",
    "ProgramBook",
    "ProgramConfigError",
    "ProgramRules",
    "SpikeRules",
    "periods_of",
]

Detector = Literal["ewma", "odmap"]
DETECTORS: tuple[Detector, ...] = ("ewma", "odmap")


class ProgramConfigError(ValueError):
    """The reporting programs file (or a time zone it names) is not valid."""


@dataclass(frozen=True, slots=True)
class Periods:
    """A local date and the first day of the week, month and quarter it falls in."""

    day: date
    week: date
    month: date
    quarter: date

    def as_row(self) -> dict[str, date]:
        return {"day": self.day, "week": self.week, "month": self.month, "quarter": self.quarter}


def periods_of(day: date) -> Periods:
    return Periods(
        day=day,
        week=day - timedelta(days=day.weekday()),
        month=day.replace(day=1),
        quarter=date(day.year, 3 * ((day.month - 1) // 3) + 1, 1),
    )


@dataclass(frozen=True, slots=True)
class SpikeRules:
    """Which detectors watch a program's counties, and their parameters."""

    detectors: tuple[Detector, ...] = DETECTORS
    ewma: EwmaParams = field(default_factory=EwmaParams)
    odmap: OdmapParams = field(default_factory=OdmapParams)


SPIKE_KEYS = {
    "detectors": "the detectors that run: a list of `ewma` and `odmap` (both by default)",
    "ewma_baseline_days": "EWMA baseline length in days (28)",
    "ewma_guard_days": "EWMA guard band in days (2)",
    "ewma_smoothing": "EWMA smoothing coefficient(s): 0.4, 0.9 or a list of both (0.4)",
    "ewma_alert_p": "EWMA p-value below which a day is an alert (0.01)",
    "ewma_warning_p": "EWMA p-value below which a day is a warning (0.05)",
    "odmap_threshold": "ODMAP: alert at this many overdoses in one county (5) ...",
    "odmap_window_hours": "... within this many hours (24)",
}
"""The keys of a `[programs.<id>.spikes]` table, with what they mean (and their defaults)."""


def _spike_rules(program_id: str, entry: Any) -> SpikeRules:
    where = f"programs.{program_id}.spikes"
    if not isinstance(entry, dict):
        raise ProgramConfigError(f"{where} must be a table")
    unknown = set(entry) - set(SPIKE_KEYS)
    if unknown:
        raise ProgramConfigError(f"{where}: unknown keys {sorted(unknown)}")
    detectors = entry.get("detectors", list(DETECTORS))
    if not isinstance(detectors, list) or not set(detectors) <= set(DETECTORS):
        raise ProgramConfigError(f"{where}.detectors must be a list of {list(DETECTORS)}")
    smoothing = entry.get("ewma_smoothing", [0.4])
    if not isinstance(smoothing, list):
        smoothing = [smoothing]
    try:
        ewma = EwmaParams(
            baseline_days=int(entry.get("ewma_baseline_days", 28)),
            guard_days=int(entry.get("ewma_guard_days", 2)),
            smoothing=tuple(float(w) for w in smoothing),
            alert_p=float(entry.get("ewma_alert_p", 0.01)),
            warning_p=float(entry.get("ewma_warning_p", 0.05)),
        )
        odmap = OdmapParams(
            threshold=int(entry.get("odmap_threshold", 5)),
            window=timedelta(hours=float(entry.get("odmap_window_hours", 24))),
        )
    except (TypeError, ValueError) as exc:
        raise ProgramConfigError(f"{where}: {exc}") from None
    ordered = tuple(d for d in DETECTORS if d in detectors)
    return SpikeRules(detectors=ordered, ewma=ewma, odmap=odmap)


@dataclass(frozen=True, slots=True)
class ProgramRules:
    program_id: str
    timezone: str
    suppression_threshold: int
    """Counts from 1 to this minus one are hidden (10: 1-9 show as "<10", as CDC WONDER)."""
    unstable_max: int
    """Rates whose numerator is this or less are flagged unstable (20, as CDC WISQARS)."""
    spikes: SpikeRules = field(default_factory=SpikeRules)

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)

    def local_date(self, when: datetime) -> date:
        return when.astimezone(self.zone).date()

    def periods(self, when: datetime) -> Periods:
        return periods_of(self.local_date(when))


@functools.cache
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ProgramConfigError(f"unknown time zone {name!r}") from None


_KEYS = {"timezone", "suppression_threshold", "unstable_max", "spikes"}


class ProgramBook:
    """Each program's rules, from the settings (read once, at start-up)."""

    def __init__(
        self,
        *,
        timezone: str = "America/New_York",
        suppression_threshold: int = 10,
        unstable_max: int = 20,
        programs: dict[str, dict[str, Any]] | None = None,
        policy_dir: Path | None = None,
    ) -> None:
        _zone(timezone)
        self._default = {
            "timezone": timezone,
            "suppression_threshold": suppression_threshold,
            "unstable_max": unstable_max,
        }
        self._programs = {k: dict(v) for k, v in (programs or {}).items()}
        for program_id, entry in self._programs.items():
            unknown = set(entry) - _KEYS
            if unknown:
                raise ProgramConfigError(f"programs.{program_id}: unknown keys {sorted(unknown)}")
            if "timezone" in entry:
                _zone(str(entry["timezone"]))
            for key in ("suppression_threshold", "unstable_max"):
                if key in entry and (not isinstance(entry[key], int) or entry[key] < 1):
                    raise ProgramConfigError(f"programs.{program_id}.{key} must be a whole number")
        self._spikes = {
            program_id: _spike_rules(program_id, entry["spikes"])
            for program_id, entry in self._programs.items()
            if "spikes" in entry
        }
        self._policy_dir = policy_dir
        self._cache: dict[str, ProgramRules] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ProgramBook:
        programs: dict[str, dict[str, Any]] = {}
        if settings.reporting_programs is not None:
            try:
                document = tomllib.loads(settings.reporting_programs.read_text("utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ProgramConfigError(
                    f"{settings.reporting_programs}: {type(exc).__name__}: {exc}"
                ) from None
            programs = document.get("programs", {})
            if not isinstance(programs, dict):
                raise ProgramConfigError("the programs file needs [programs.<id>] tables")
        return cls(
            timezone=settings.reporting_timezone,
            suppression_threshold=settings.reporting_suppression_threshold,
            unstable_max=settings.reporting_unstable_max,
            programs=programs,
            policy_dir=settings.scheduler_policy_dir,
        )

    def _policy_timezone(self, program_id: str) -> str | None:
        """The timezone of the program's scheduler policy file, if it has one."""
        if self._policy_dir is None:
            return None
        path = self._policy_dir / f"{program_id}.toml"
        try:
            zone = tomllib.loads(path.read_text("utf-8")).get("timezone")
        except (OSError, tomllib.TOMLDecodeError):
            return None  # the scheduler refuses a bad file at its own start-up
        return zone if isinstance(zone, str) else None

    def for_program(self, program_id: str) -> ProgramRules:
        rules = self._cache.get(program_id)
        if rules is None:
            entry = {**self._default, **self._programs.get(program_id, {})}
            if "timezone" not in self._programs.get(program_id, {}):
                entry["timezone"] = self._policy_timezone(program_id) or entry["timezone"]
            rules = ProgramRules(
                program_id=program_id,
                timezone=str(entry["timezone"]),
                suppression_threshold=int(entry["suppression_threshold"]),
                unstable_max=int(entry["unstable_max"]),
                spikes=self._spikes.get(program_id, SpikeRules()),
            )
            rules.zone  # noqa: B018 - a bad zone from a policy file fails here, once
            self._cache[program_id] = rules
        return rules
