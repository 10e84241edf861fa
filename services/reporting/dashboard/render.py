"""Vega-Lite specifications to SVG on the server, with vl-convert (Vega's own renderer in an
embedded JavaScript engine, offline): see ADR 0020.

A first render takes a second or more (the engine starts and compiles Vega); later ones
0.05-0.3 s each. So the renderer is warmed when the service starts, renders the charts of a
page side by side, and keeps the SVG of recent specifications: a specification holds its data,
so the same specification always gives the same picture, and a page asked again (another lead,
a reload) before any new event changed its figures costs no rendering.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import vl_convert

__all__ = ["SvgRenderer", "xml_safe"]

_WARM_UP: dict[str, Any] = {
    "data": {"values": [{"a": "x", "b": 1}]},
    "mark": "bar",
    "encoding": {
        "x": {"field": "a", "type": "nominal"},
        "y": {"field": "b", "type": "quantitative"},
    },
}


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""Characters XML 1.0 cannot hold. vl-convert aborts the whole process (a Rust panic that
cannot unwind) when a text in the specification carries one, so none reaches it."""


def xml_safe(value: Any) -> Any:
    """The specification with every character XML cannot hold replaced by U+FFFD."""
    if isinstance(value, str):
        return _NOT_XML.sub("\ufffd", value)
    if isinstance(value, dict):
        return {xml_safe(k): xml_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [xml_safe(v) for v in value]
    return value


class SvgRenderer:
    """Renders specifications to SVG text on worker threads, remembering the last `keep`."""

    def __init__(self, *, workers: int = 2, keep: int = 256) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="vl-convert")
        self._keep = keep
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(spec: dict[str, Any]) -> str:
        text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def render_now(self, spec: dict[str, Any]) -> str:
        """One specification, on this thread (remembered like any other)."""
        key = self.key(spec)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        svg = str(vl_convert.vegalite_to_svg(xml_safe(spec)))
        with self._lock:
            self._cache[key] = svg
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        return svg

    async def render(self, specs: Sequence[dict[str, Any]]) -> list[str]:
        """Several specifications side by side; in their order."""
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(
                *(loop.run_in_executor(self._pool, self.render_now, s) for s in specs)
            )
        )

    async def warm(self) -> None:
        """Start the engine and compile once on every worker, before the first page."""
        loop = asyncio.get_running_loop()
        specs = [dict(_WARM_UP, description=f"warm-up {i}") for i in range(2)]
        await asyncio.gather(
            *(loop.run_in_executor(self._pool, vl_convert.vegalite_to_svg, s) for s in specs)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
