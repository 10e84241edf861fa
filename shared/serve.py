"""Running services as processes: one service under uvicorn, or all four as child processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from shared.logging import configure_logging
from shared.settings import SERVICES, ServiceName, Settings, get_settings

__all__ = ["run_all", "serve"]

log = logging.getLogger(__name__)


def serve(service: ServiceName, app_factory: Callable[[Settings], FastAPI]) -> None:
    """Run one service in the foreground until SIGINT or SIGTERM."""
    settings = get_settings()
    configure_logging(service=service, level=settings.log_level)
    app = app_factory(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port_for(service),
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    asyncio.run(uvicorn.Server(config).serve())


def run_all(settings: Settings, services: tuple[ServiceName, ...] = SERVICES) -> int:
    """Start each service as a child process; stop them all when one dies or on a signal."""
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name in services:
        children[name] = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", f"services.{name}"], env=os.environ.copy()
        )
        print(f"  {name:<10} http://{settings.host}:{settings.port_for(name)}  (docs at /docs)")
        if name == "intake":
            print(f"  {'':<10} mllp://{settings.host}:{settings.mllp_port}")
    exit_code = 0
    while not stopping:
        for child_name, child in children.items():
            if child.poll() is not None:
                print(f"portline: {child_name} exited with {child.returncode}; stopping the rest")
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
