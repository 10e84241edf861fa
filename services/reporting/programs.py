"""What reporting needs to know of each program: its clock (time zone) and its suppression
rules, and the calendar periods (day, ISO week, month, quarter) of a moment on that clock.

A program's time zone is, in this order: its entry in the reporting programs file
(`PORTLINE_REPORTING_PROGRAMS`), the `timezone` of its scheduler policy file
(`PORTLINE_SCHEDULER_POLICY_DIR/<program>.toml`, so both services keep one clock), or
`PORTLINE_REPORTING_TIMEZONE`. Facts are stored with their local periods, so changing a
program's time zone takes a rebuild (`portline reporting rebuild`).

Exceptions:

    ProgramConfigError - the reporting programs file or a time zone in it is not valid
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.settings import Settings

__all__ = ["Periods", "ProgramBook", "ProgramConfigError", "ProgramRules", "periods_of"]


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
class ProgramRules:
    program_id: str
    timezone: str
    suppression_threshold: int
    """Counts from 1 to this minus one are hidden (10: 1-9 show as "<10", as CDC WONDER)."""
    unstable_max: int
    """Rates whose numerator is this or less are flagged unstable (20, as CDC WISQARS)."""

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


_KEYS = {"timezone", "suppression_threshold", "unstable_max"}


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
            )
            rules.zone  # noqa: B018 - a bad zone from a policy file fails here, once
            self._cache[program_id] = rules
        return rules
