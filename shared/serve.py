"""Running services as processes: one service under uvicorn, several worker processes of one
service sharing its ports, or all four services as child processes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from shared.logging import configure_logging
from shared.settings import SERVICES, ConfigurationError, ServiceName, Settings, get_settings

__all__ = ["run_all", "serve"]

log = logging.getLogger(__name__)


WORKER_ENV = "PORTLINE_WORKER"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set for worker processes: they keep their metrics in files there, and whichever worker
answers /metrics reports the sum over all of them (prometheus_client's multiprocess mode)."""


def _fresh_metrics_dir(settings: Settings, service: str) -> Path:
    """An empty directory for this run's worker metrics (files of an earlier run removed)."""
    directory = (settings.var_dir / "metrics" / service).resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def serve(service: ServiceName, app_factory: Callable[[Settings], FastAPI]) -> None:
    """Run one service in the foreground until SIGINT or SIGTERM.

    With more than one worker configured (PostgreSQL only), this process supervises that many
    worker processes, which share the service's ports through SO_REUSEPORT."""
    settings = get_settings()
    workers = settings.workers_for(service)
    if workers > 1 and not settings.worker:  # the supervisor; its workers have a name
        metrics_dir = _fresh_metrics_dir(settings, service)
        sys.exit(
            _supervise(
                {
                    f"{service}-{i}": [sys.executable, "-m", f"services.{service}"]
                    for i in range(workers)
                },
                extra_env=lambda name: {WORKER_ENV: name, METRICS_DIR_ENV: str(metrics_dir)},
            )
        )
    configure_logging(service=service, level=settings.log_level)
    try:
        app = app_factory(settings)
    except ConfigurationError as exc:
        print(f"portline: {service} cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port_for(service),
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    sockets = None
    if workers > 1:
        sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, settings.port_for(service)))
        sockets = [sock]
    _tune_gc()
    _run(uvicorn.Server(config).serve(sockets=sockets))


GC_GEN0_THRESHOLD = 50_000
"""Allocations between young-generation collections (CPython's default is 700). A request
allocates hundreds of short-lived objects, so at the default the cyclic collector ran many
times a second and took about a tenth of intake's CPU under load (py-spy, make bench)."""


def _tune_gc() -> None:
    """Freeze what start-up built (modules, the app, its routes: never garbage) out of the
    collector's scans, and collect the young generation less often. Reference counting
    still frees almost everything at once; only cycles wait a little longer."""
    gc.collect()
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (it comes with uvicorn[standard]): socket I/O is
    a large share of intake's per-message cost. Ctrl-C ends it quietly: uvicorn has already
    shut the service down when it re-raises the interrupt."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(main)


def run_all(settings: Settings, services: tuple[ServiceName, ...] = SERVICES) -> int:
    """Start each service as a child process; stop them all when one dies or on a signal."""
    for name in services:
        print(f"  {name:<10} http://{settings.host}:{settings.port_for(name)}  (docs at /docs)")
        if name == "intake":
            print(f"  {'':<10} mllp://{settings.host}:{settings.mllp_port}")
    return _supervise({name: [sys.executable, "-m", f"services.{name}"] for name in services})


def _supervise(
    commands: dict[str, list[str]],
    extra_env: Callable[[str], dict[str, str]] = lambda _name: {},
) -> int:
    """Run the commands as children until one exits or SIGINT/SIGTERM; then stop the rest."""
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name, argv in commands.items():
        children[name] = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv, env={**os.environ, **extra_env(name)}
        )
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"portline: {name} exited with {child.returncode}; stopping the rest")
                exit_code = child.returncode or 1
                stopping = True
                break
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for child in children.values():
        remaining = max(0.1, deadline - time.monotonic())
        try:
            child.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return exit_code
