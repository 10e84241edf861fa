"""docs/reporting.md agrees with the code: every metric under a heading with its version and
its definition word for word, every error code of the reporting API, every breakdown, and the
rebuild command's options."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.reporting.metrics import METRICS, Metric
from services.reporting.query import DIMENSIONS
from shared.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "reporting.md").read_text(encoding="utf-8")
SOURCES = [
    (ROOT / "services" / "reporting" / name).read_text(encoding="utf-8")
    for name in ("api.py", "answers.py")
]
_API_ERROR = re.compile(r'(?:ApiError\(\s*\d{3}\s*,|QuestionError\()\s*"([a-z0-9_]+)"')


@pytest.mark.parametrize("metric", METRICS, ids=[m.id for m in METRICS])
def test_every_metric_is_explained_with_its_version(metric: Metric) -> None:
    heading = f"#### `{metric.id}` v{metric.version}: {metric.title}"
    assert heading in DOC, f"docs/reporting.md needs the heading {heading!r}"
    section = DOC.split(heading, 1)[1].split("####", 1)[0]
    assert metric.definition in section
    assert metric.computation in section


def test_every_error_code_of_the_api_is_documented() -> None:
    codes = {code for source in SOURCES for code in _API_ERROR.findall(source)}
    assert {"internal_view_forbidden", "invalid_range", "unknown_export"} <= codes
    missing = [c for c in sorted(codes) if f"`{c}`" not in DOC]
    assert not missing, f"docs/reporting.md does not name {missing}"


@pytest.mark.parametrize("dimension", DIMENSIONS)
def test_every_breakdown_is_documented(dimension: str) -> None:
    assert f"| `{dimension}`" in DOC or f"`{dimension}`, " in DOC


def test_the_rebuild_command_and_its_options_are_documented() -> None:
    parser = build_parser()
    top = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    reporting = top.choices["reporting"]  # type: ignore[attr-defined]
    commands = next(a for a in reporting._actions if a.__class__.__name__ == "_SubParsersAction")
    rebuild = commands.choices["rebuild"]  # type: ignore[attr-defined]
    assert "portline reporting rebuild" in DOC
    for action in rebuild._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert option in DOC, option
