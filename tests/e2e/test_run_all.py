"""`portline run all` as an operator runs it: four processes, healthy, stopped by Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from shared.settings import SERVICES

pytestmark = pytest.mark.e2e

PORTLINE = str(Path(sys.executable).parent / "portline")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_run_all_brings_up_four_ready_services_and_ctrl_c_stops_them(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    ports = {name: free_port() for name in SERVICES}
    env = {
        **os.environ,
        "PORTLINE_ENV": "development",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db",
        "PORTLINE_VAR_DIR": str(tmp_path),
        "PORTLINE_MLLP_PORT": str(free_port()),
        **{f"PORTLINE_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    subprocess.run([PORTLINE, "topics", "create"], env=env, check=True, timeout=60)
    migrated = subprocess.run(
        [PORTLINE, "migrate"], env=env, check=True, timeout=120, capture_output=True, text=True
    )
    for name in SERVICES:
        assert f"{name}: at {name}_" in migrated.stdout

    log_path = tmp_path / "run.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [PORTLINE, "run", "all"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        pending = dict(ports)
        while pending and time.monotonic() < deadline:
            assert proc.poll() is None, "portline run all exited early"
            for name, port in list(pending.items()):
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                except httpx.TransportError:
                    continue
                if r.status_code == 200:
                    checks = r.json()["checks"]
                    assert {"database", "kafka"} <= set(checks)
                    assert set(checks.values()) == {"ok"}
                    if name in ("scheduler", "outreach"):  # they take team tokens
                        assert "team_access" in checks
                    del pending[name]
            time.sleep(0.5)
        assert not pending, f"not ready in time: {sorted(pending)}"
        for port in ports.values():
            assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5).status_code == 200
            assert "portline_http" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        # As the README shows: a development token works against the team APIs. (A program
        # of its own: a long-lived broker holds other runs' demo reports, sealed under their
        # keys.)
        program = f"runall{uuid.uuid4().hex[:8]}"
        token = subprocess.run(
            [PORTLINE, "dev-token", "--role", "team_lead", "--program", program],
            env=env,
            check=True,
            timeout=60,
            capture_output=True,
            text=True,
        ).stdout.strip()
        lead = {"Authorization": f"Bearer {token}"}
        for name, path in (("scheduler", "/v1/policy"), ("outreach", "/v1/tasks")):
            r = httpx.get(f"http://127.0.0.1:{ports[name]}{path}", headers=lead, timeout=5)
            assert r.status_code == 200, f"{name}: {r.text}"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rc = proc.wait(timeout=40)
    output = log_path.read_text()
    assert rc == 0, output[-3000:]
    for port in ports.values():
        assert f"http://127.0.0.1:{port}" in output
    for port in ports.values():
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
