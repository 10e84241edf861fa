"""The docs agree with the code: every event, field, topic and setting is documented, and every
relative link (and its #anchor) in the markdown resolves. docs/intake.md names every error
code intake answers with, every intake CLI command and option, intake's metrics and settings.

When one of these fails, fix the docs (docs/events.md, docs/architecture.md, docs/intake.md) in
the same change as the code, not the test.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

import shared.events  # noqa: F401 - importing registers every event model
from services.intake.hl7 import HL7Error
from services.intake.mllp_listener import FramingRejected
from services.intake.nemsis import EmsInputError
from services.intake.pipeline import UnknownFacilityError
from shared.cli import build_parser
from shared.envelope import Event, registered_events
from shared.settings import Settings
from shared.topics import ALL_TOPICS

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EVENTS_MD = DOCS / "events.md"
ARCHITECTURE_MD = DOCS / "architecture.md"
INTAKE_MD = DOCS / "intake.md"
INTAKE_API = ROOT / "services" / "intake" / "api.py"
INTAKE_METRICS = ROOT / "services" / "intake" / "metrics.py"

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"`[^`]*`")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_API_ERROR = re.compile(r'ApiError\(\s*(\d{3})\s*,\s*"([a-z0-9_]+)"')
_METRIC_NAME = re.compile(r'"(portline_[a-z0-9_]+)"')
# HL7 errors defined outside services.intake.hl7; importing them makes them HL7Error subclasses.
_HL7_ERRORS_ELSEWHERE = (UnknownFacilityError, FramingRejected)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    line: int


@dataclass(frozen=True)
class Markdown:
    """A markdown file's lines outside fenced code blocks, and its headings."""

    path: Path
    lines: tuple[str, ...]
    headings: tuple[Heading, ...]

    @classmethod
    def read(cls, path: Path) -> Markdown:
        lines: list[str] = []
        headings: list[Heading] = []
        in_fence = False
        for raw in path.read_text(encoding="utf-8").splitlines():
            if _FENCE.match(raw):
                in_fence = not in_fence
                lines.append("")
                continue
            if in_fence:
                lines.append("")
                continue
            match = _HEADING.match(raw)
            if match:
                headings.append(Heading(len(match[1]), match[2], len(lines)))
            lines.append(raw)
        return cls(path, tuple(lines), tuple(headings))

    def section(self, heading: Heading) -> str:
        """The heading's line and everything under it, up to the next heading of its level."""
        end = len(self.lines)
        for other in self.headings:
            if other.line > heading.line and other.level <= heading.level:
                end = other.line
                break
        return "\n".join(self.lines[heading.line : end])

    def intro(self, heading: Heading) -> str:
        """The heading's own text before its first subheading."""
        end = len(self.lines)
        for other in self.headings:
            if other.line > heading.line:
                end = other.line
                break
        return "\n".join(self.lines[heading.line : end])

    def parent(self, heading: Heading, level: int) -> Heading | None:
        """The nearest heading of `level` above `heading`."""
        found = None
        for other in self.headings:
            if other.line >= heading.line:
                break
            if other.level == level:
                found = other
        return found

    def anchors(self) -> set[str]:
        seen: dict[str, int] = {}
        anchors: set[str] = set()
        for heading in self.headings:
            slug = github_slug(heading.text)
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
        return anchors


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _word(text: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.]){re.escape(text)}(?![\w])")


def _documented_events() -> list[tuple[str, int, type[Event]]]:
    return sorted(
        (name, version, model)
        for (name, version), model in registered_events().items()
        if not model.__module__.startswith("tests.")
    )


EVENTS = _documented_events()


def _env_var(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, str):
        return alias
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def _markdown_files() -> list[Path]:
    files = [*sorted(DOCS.glob("*.md")), *sorted((DOCS / "adr").glob("*.md"))]
    readme = ROOT / "README.md"
    if readme.exists():
        files.append(readme)
    return files


def _event_headings(doc: Markdown, name: str, version: int) -> Iterator[Heading]:
    for heading in doc.headings:
        if _word(name).search(heading.text) and _word(f"v{version}").search(heading.text):
            yield heading


@pytest.fixture(scope="module")
def events_doc() -> Markdown:
    return Markdown.read(EVENTS_MD)


def test_the_documented_events_are_the_real_ones() -> None:
    assert len(EVENTS) >= 23


@pytest.mark.parametrize(
    ("name", "version", "model"), EVENTS, ids=[f"{n}-v{v}" for n, v, _ in EVENTS]
)
def test_every_event_is_documented_under_its_topic(
    events_doc: Markdown, name: str, version: int, model: type[Event]
) -> None:
    for heading in _event_headings(events_doc, name, version):
        topic_heading = events_doc.parent(heading, 2)
        if topic_heading is not None and model.topic in topic_heading.text:
            return
    for line in events_doc.lines:
        if (
            line.lstrip().startswith("|")
            and _word(name).search(line)
            and _word(f"v{version}").search(line)
            and model.topic in line
        ):
            return
    pytest.fail(
        f"docs/events.md has no heading '{name} v{version}' under a heading naming "
        f"{model.topic}, nor a table row with both"
    )


@pytest.mark.parametrize(
    ("name", "version", "model"), EVENTS, ids=[f"{n}-v{v}" for n, v, _ in EVENTS]
)
def test_every_event_field_is_documented_in_its_section(
    events_doc: Markdown, name: str, version: int, model: type[Event]
) -> None:
    headings = list(_event_headings(events_doc, name, version))
    assert headings, f"docs/events.md has no heading for {name} v{version}"
    text = ""
    for heading in headings:
        text += events_doc.section(heading)
        topic_heading = events_doc.parent(heading, 2)
        if topic_heading is not None:
            text += events_doc.intro(topic_heading)
    missing = [field for field in model.model_fields if f"`{field}`" not in text]
    assert not missing, f"{name} v{version}: fields not documented in docs/events.md: {missing}"


@pytest.mark.parametrize("topic", [t.name for t in ALL_TOPICS])
def test_every_topic_has_a_section(events_doc: Markdown, topic: str) -> None:
    assert any(h.level == 2 and topic in h.text for h in events_doc.headings), (
        f"docs/events.md has no '## ... {topic}' section"
    )


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_every_setting_is_documented_with_its_default(field: str) -> None:
    env_var = _env_var(field)
    text = ARCHITECTURE_MD.read_text(encoding="utf-8")
    assert re.search(rf"(?<![A-Z0-9_]){env_var}(?![A-Z0-9_])", text), (
        f"{env_var} is not in docs/architecture.md"
    )
    rows = [line for line in text.splitlines() if line.startswith(f"| `{env_var}` |")]
    assert len(rows) == 1, f"docs/architecture.md needs one configuration row for {env_var}"
    cells = [cell.strip() for cell in rows[0].strip().strip("|").split("|")]
    default = Settings.model_fields[field].default
    expected = "unset" if default is None else f"`{default}`"
    assert cells[2] == expected, f"{env_var}: the documented default should be {expected}"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    doc = Markdown.read(path)
    broken: list[str] = []
    for number, line in enumerate(doc.lines, start=1):
        text = _CODE_SPAN.sub("", line)
        targets = [m[1] for m in _INLINE_LINK.finditer(text)]
        definition = _REFERENCE_DEFINITION.match(text)
        if definition:
            targets.append(definition[1])
        for target in targets:
            if _SCHEME.match(target):
                continue
            problem = _link_problem(path, doc, target)
            if problem:
                broken.append(f"line {number}: {target} ({problem})")
    assert not broken, f"{path.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def _link_problem(source: Path, source_doc: Markdown, target: str) -> str | None:
    file_part, _, anchor = target.partition("#")
    if not file_part:
        return None if anchor in source_doc.anchors() else "no such heading"
    resolved = (source.parent / file_part).resolve()
    if not resolved.is_relative_to(ROOT):
        return "outside the repository"
    if not resolved.exists():
        return "no such file"
    if anchor and resolved.suffix == ".md" and anchor not in Markdown.read(resolved).anchors():
        return "no such heading"
    return None


# --- docs/intake.md ------------------------------------------------------------------------


def _api_error_codes() -> list[str]:
    """Every `code` the intake routes raise as ApiError(<status>, "<code>", ...)."""
    source = INTAKE_API.read_text(encoding="utf-8")
    return sorted({code for _status, code in _API_ERROR.findall(source)})


def _subclasses(base: type[T]) -> Iterator[type[T]]:
    for cls in base.__subclasses__():
        yield cls
        yield from _subclasses(cls)


def _error_class_codes() -> list[str]:
    """The stable codes of HL7 and NEMSIS errors: AR reason codes and EMS error codes."""
    classes: list[type[HL7Error] | type[EmsInputError]] = [
        *_subclasses(HL7Error),
        *_subclasses(EmsInputError),
    ]
    return sorted({str(cls.code) for cls in classes if not cls.__module__.startswith("tests.")})


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _intake_commands() -> list[tuple[str, argparse.ArgumentParser]]:
    """("intake check", parser), ("partners add", parser), ...: every intake CLI command."""
    top = _subparsers(build_parser())
    return sorted(
        (f"{group} {name}", sub)
        for group in ("intake", "partners")
        for name, sub in _subparsers(top[group]).items()
    )


def _intake_settings() -> list[str]:
    return [f for f in Settings.model_fields if f.startswith("intake_") or f == "mllp_port"]


API_ERROR_CODES = _api_error_codes()
ERROR_CLASS_CODES = _error_class_codes()
INTAKE_COMMANDS = _intake_commands()
INTAKE_METRIC_NAMES = sorted(set(_METRIC_NAME.findall(INTAKE_METRICS.read_text(encoding="utf-8"))))


@pytest.fixture(scope="module")
def intake_doc() -> str:
    return INTAKE_MD.read_text(encoding="utf-8")


def test_the_intake_codes_commands_and_metrics_are_found() -> None:
    assert len(API_ERROR_CODES) >= 9, API_ERROR_CODES
    assert {"not_hl7", "unknown_sending_facility", "xml_forbidden"} <= set(ERROR_CLASS_CODES)
    assert {"intake check", "intake replay", "partners issue-key"} <= {
        n for n, _ in INTAKE_COMMANDS
    }
    assert len(INTAKE_METRIC_NAMES) >= 3


@pytest.mark.parametrize("code", API_ERROR_CODES)
def test_every_intake_api_error_code_is_documented(intake_doc: str, code: str) -> None:
    assert f"`{code}`" in intake_doc, f"docs/intake.md does not name the error code `{code}`"


@pytest.mark.parametrize("code", ERROR_CLASS_CODES)
def test_every_hl7_and_nemsis_error_code_is_documented(intake_doc: str, code: str) -> None:
    assert f"`{code}`" in intake_doc, f"docs/intake.md does not name the error code `{code}`"


@pytest.mark.parametrize(
    ("command", "parser"), INTAKE_COMMANDS, ids=[name for name, _ in INTAKE_COMMANDS]
)
def test_every_intake_cli_command_and_option_is_documented(
    intake_doc: str, command: str, parser: argparse.ArgumentParser
) -> None:
    assert re.search(rf"portline {re.escape(command)}(?![\w-])", intake_doc), (
        f"docs/intake.md does not mention `portline {command}`"
    )
    options = [
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    missing = [o for o in options if not re.search(rf"{re.escape(o)}(?![\w-])", intake_doc)]
    assert not missing, f"portline {command}: options not in docs/intake.md: {missing}"


@pytest.mark.parametrize("metric", INTAKE_METRIC_NAMES)
def test_every_intake_metric_is_documented(intake_doc: str, metric: str) -> None:
    assert f"`{metric}`" in intake_doc, f"docs/intake.md does not describe `{metric}`"


@pytest.mark.parametrize("field", _intake_settings())
def test_every_intake_setting_is_in_the_intake_guide_with_its_default(
    intake_doc: str, field: str
) -> None:
    env_var = _env_var(field)
    rows = [line for line in intake_doc.splitlines() if line.startswith(f"| `{env_var}` |")]
    assert len(rows) == 1, f"docs/intake.md needs one settings row for {env_var}"
    cells = [cell.strip() for cell in rows[0].strip().strip("|").split("|")]
    default = Settings.model_fields[field].default
    expected = "unset" if default is None else f"`{default}`"
    assert cells[1] == expected, f"{env_var}: docs/intake.md should give the default {expected}"


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Topic port.intake.overdoses.v1", "topic-portintakeoverdosesv1"),
        ("`make run`", "make-run"),
        ("Outbox: from unit of work to Kafka", "outbox-from-unit-of-work-to-kafka"),
        ("See [the runbook](deploy.md)", "see-the-runbook"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug
