"""Cheap refusals over real HTTP, on the running services: a body over the limit, a caller who
may not call, and a body that is not JSON are answered before the body is sent at all (the
request declares a body and never sends it, so a server that waited for it would time out).
Then the operations endpoints, a forged cursor and the one error shape, as clients see them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import IntakeProcess, ServiceProcess

pytestmark = pytest.mark.e2e

PORTLINE = str(Path(sys.executable).parent / "portline")


async def _token(env: dict[str, str], role: str, subject: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        [PORTLINE, "dev-token", "--role", role, "--program", "demo", "--subject", subject],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


async def _raw(base: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    """Send a request's head (and only as much body as given) on a fresh connection; read the
    answer. Bounded: a server waiting for the rest of the body fails the test."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        headers: dict[str, str] = {}
        while True:
            line = (await asyncio.wait_for(reader.readline(), 10)).decode().strip()
            if not line:
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        payload = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
    finally:
        writer.close()
    return int(status.split()[1]), headers, json.loads(payload) if payload else None


def _head(method: str, path: str, *headers: str) -> str:
    return "\n".join([f"{method} {path} HTTP/1.1", "Host: portline", *headers, ""])


async def test_a_body_over_the_limit_is_refused_before_it_is_sent_on_every_service(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,
    outreach_process: ServiceProcess,
) -> None:
    targets = [
        (intake_process.http, "/v1/le/overdose-reports"),
        (scheduler_process.http, f"/v1/possible-matches/{uuid.uuid4()}/confirm"),
        (outreach_process.http, f"/v1/tasks/{uuid.uuid4()}/attempts"),
    ]
    for base, path in targets:
        head = _head("POST", path, "Content-Type: application/json", "Content-Length: 50000000")
        status, _headers, body = await _raw(base, head)
        assert (status, body["error"]["code"]) == (413, "body_too_large"), base


async def test_who_may_not_call_is_refused_before_the_body_is_sent(
    outreach_process: ServiceProcess, scheduler_process: ServiceProcess
) -> None:
    env = outreach_process.env
    deputy = await _token(env, "deputy", "deputy-e2e")
    peer = await _token(env, "peer", "peer-e2e")
    attempt = f"/v1/tasks/{uuid.uuid4()}/attempts"
    declared = ("Content-Type: application/json", "Content-Length: 200")
    status, headers, body = await _raw(outreach_process.http, _head("POST", attempt, *declared))
    assert (status, body["error"]["code"]) == (401, "missing_token")
    assert headers["www-authenticate"] == "Bearer"
    as_deputy = _head("POST", attempt, *declared, f"Authorization: Bearer {deputy}")
    status, _headers, body = await _raw(outreach_process.http, as_deputy)
    assert (status, body["error"]["code"]) == (403, "forbidden_role")
    as_text = _head(
        "POST",
        attempt,
        "Content-Type: text/plain",
        "Content-Length: 200",
        f"Authorization: Bearer {peer}",
    )
    status, _headers, body = await _raw(outreach_process.http, as_text)
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
    # the scheduler's routes too: a peer may not decide a match, whatever the body
    decide = _head(
        "POST",
        f"/v1/possible-matches/{uuid.uuid4()}/confirm",
        *declared,
        f"Authorization: Bearer {peer}",
    )
    status, _headers, body = await _raw(scheduler_process.http, decide)
    assert (status, body["error"]["code"]) == (403, "forbidden_role")


async def test_a_chunked_body_is_refused_once_it_passes_the_limit(
    outreach_process: ServiceProcess,
) -> None:
    peer = await _token(outreach_process.env, "peer", "peer-e2e")
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20))  # 1.3 MB
    head = _head(
        "POST",
        f"/v1/tasks/{uuid.uuid4()}/attempts",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
        f"Authorization: Bearer {peer}",
    )
    status, _headers, answer = await _raw(outreach_process.http, head, body + b"0\r\n\r\n")
    assert (status, answer["error"]["code"]) == (413, "body_too_large")


async def test_operations_endpoints_forged_cursors_and_the_one_error_shape(
    intake_process: IntakeProcess,
    scheduler_process: ServiceProcess,
    outreach_process: ServiceProcess,
) -> None:
    lead = await _token(outreach_process.env, "team_lead", "lead-e2e")
    auth = {"Authorization": f"Bearer {lead}"}
    async with httpx.AsyncClient(timeout=10) as client:
        for base in (intake_process.http, scheduler_process.http, outreach_process.http):
            head = await client.head(f"{base}/healthz")
            assert (head.status_code, head.content) == (200, b"")
            assert (await client.head(f"{base}/readyz")).status_code == 200
            metrics = await client.get(f"{base}/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            document = (await client.get(f"{base}/openapi.json")).json()
            assert "HTTPValidationError" not in document["components"]["schemas"]
        for base, path in (
            (outreach_process.http, "/v1/tasks"),
            (outreach_process.http, "/v1/team/members"),
            (scheduler_process.http, "/v1/possible-matches"),
        ):
            forged = await client.get(f"{base}{path}", params={"cursor": "²"}, headers=auth)
            assert forged.status_code == 400, forged.text
            assert forged.json()["error"]["code"] == "invalid_cursor"
        invalid = await client.get(
            f"{scheduler_process.http}/v1/possible-matches", params={"limit": 0}, headers=auth
        )
        assert invalid.status_code == 422
        assert invalid.json()["error"]["code"] == "validation_error"
        matches = await client.get(f"{scheduler_process.http}/v1/possible-matches", headers=auth)
        assert set(matches.json()) == {"items", "next_cursor"}
