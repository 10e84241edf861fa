"""The intake service as a partner sees it: a process on loopback, MLLP and HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import sqlalchemy as sa

from shared.db import create_engine
from tests.e2e.proxy import TcpProxy

PORTLINE = str(Path(sys.executable).parent / "portline")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class IntakeProcess:
    http: str
    mllp_port: int
    hospital_key: str
    ems_key: str
    env: dict[str, str]
    proxy: TcpProxy
    log: Path
    process: subprocess.Popen[bytes] | None = None
    """The running `portline run intake`: the supervisor of its workers."""
    own_process_group: bool = False
    """Whether intake runs in a process group of its own, which `kill` can take down."""

    @property
    def schema(self) -> str:
        """Intake's database schema in this deployment."""
        return self.env["PORTLINE_DB_SCHEMA_PREFIX"] + "intake"

    async def kill(self) -> None:
        """Kill intake at once, supervisor and workers together, as a crash or the OOM killer
        would: SIGKILL to its process group, so that no shutdown code runs anywhere."""
        assert self.own_process_group, "intake shares the tests' process group"
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        await asyncio.to_thread(self.process.wait, 30)

    async def start(self) -> None:
        """Start intake (again, after `kill`) and wait until it is ready."""
        assert self.process is None or self.process.poll() is not None, "intake is running"
        self.process = await asyncio.to_thread(
            _start, self.env, self.log, own_process_group=self.own_process_group
        )
        await _wait_ready(self.process, self.http, self.log)

    async def mllp(self, *payloads: bytes, timeout: float = 15.0) -> list[str]:
        """Send framed payloads on one connection, one at a time; return the ACK texts."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.mllp_port)
        acks: list[str] = []
        try:
            for payload in payloads:
                writer.write(payload)
                await writer.drain()
                frame = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), timeout)
                acks.append(frame.strip(b"\x0b\x1c\r").decode())
        finally:
            writer.close()
        return acks

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a portline command against this deployment (off the event loop, which serves
        the database proxy the command connects through)."""
        return await asyncio.to_thread(
            subprocess.run,
            [PORTLINE, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _start(
    env: dict[str, str], log: Path, service: str = "intake", *, own_process_group: bool = False
) -> subprocess.Popen[bytes]:
    with log.open("a") as out:  # a restarted service's log follows the first run's
        return subprocess.Popen(
            [PORTLINE, "run", service],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=own_process_group,
        )


async def _wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as client:
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if (await client.get(f"{base}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{base} not ready in time"
            await asyncio.sleep(0.3)


async def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        await asyncio.to_thread(proc.wait, 30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
async def intake_process(
    postgres_url: str,
    runtime_postgres_url: str,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[IntakeProcess]:
    """Intake, and the scheduler and outreach beside it, connect as the runtime role (rows
    only), as in production; migrations run as the owner."""
    async with intake_deployment(
        postgres_url,
        kafka_bootstrap,
        tmp_path_factory.mktemp("intake-e2e"),
        runtime_url=runtime_postgres_url,
    ) as intake:
        yield intake


@asynccontextmanager
async def intake_deployment(
    postgres_url: str,
    kafka_bootstrap: str,
    var: Path,
    *,
    own_process_group: bool = False,
    runtime_url: str | None = None,
) -> AsyncIterator[IntakeProcess]:
    """Intake as a process of its own, on its own schemas (dropped afterwards), behind a
    database proxy the tests can cut. `own_process_group` lets a test SIGKILL it. With
    `runtime_url` (the same server as another role), the services connect as that role and
    `portline migrate` as `postgres_url`'s, the owner."""
    var.mkdir(parents=True, exist_ok=True)
    target = urlsplit(postgres_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.up()

    def proxied(url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"))

    roles = {"DATABASE_URL": proxied(postgres_url)}
    if runtime_url is not None:
        roles = {"DATABASE_URL": proxied(runtime_url), "DATABASE_OWNER_URL": proxied(postgres_url)}
    prefix = f"e2e{uuid.uuid4().hex[:8]}_"
    http_port, mllp_port = free_port(), free_port()
    env = {
        **os.environ,
        "PORTLINE_ENV": "development",
        "PORTLINE_HOST": "127.0.0.1",  # loopback only, whatever the caller's environment
        **roles,
        "PORTLINE_DB_SCHEMA_PREFIX": prefix,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PORTLINE_VAR_DIR": str(var),
        "PORTLINE_INTAKE_PORT": str(http_port),
        "PORTLINE_MLLP_PORT": str(mllp_port),
        "PORTLINE_INTAKE_MAX_MESSAGE_BYTES": "65536",
        "PORTLINE_INTAKE_PARTNER_CACHE_SECONDS": "0",
        "PORTLINE_INTAKE_WORKERS": "2",  # every e2e test also covers the shared ports
    }

    def run(*args: str) -> str:
        done = subprocess.run(
            [PORTLINE, *args], env=env, capture_output=True, text=True, timeout=120, check=True
        )
        return done.stdout

    await asyncio.to_thread(run, "topics", "create")
    await asyncio.to_thread(run, "migrate", "intake")
    await asyncio.to_thread(run, "intake", "seed-demo")
    keys = json.loads((var / "demo-keys.json").read_text())
    intake = IntakeProcess(
        f"http://127.0.0.1:{http_port}",
        mllp_port,
        keys["demo-hospital"],
        keys["demo-ems"],
        env,
        proxy,
        var / "intake.log",
        own_process_group=own_process_group,
    )
    try:
        await intake.start()
        yield intake
    finally:
        if intake.process is not None:
            await _stop(intake.process)
        await proxy.up() if proxy._server is None else None
        engine = create_engine(postgres_url, service="admin", schema="public")
        async with engine.begin() as conn:
            for service in ("intake", "scheduler", "outreach"):
                await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{prefix}{service}" CASCADE'))
        await engine.dispose()
        await proxy.down()


@dataclass
class ServiceProcess:
    http: str
    env: dict[str, str]


async def dev_token(
    env: dict[str, str], role: str, subject: str, program: str = "demo"
) -> dict[str, str]:
    """An Authorization header with a `portline dev-token` for this deployment."""
    done = await asyncio.to_thread(
        subprocess.run,
        [PORTLINE, "dev-token", "--role", role, "--program", program, "--subject", subject],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {"Authorization": f"Bearer {done.stdout.strip()}"}


@pytest.fixture(scope="session")
async def scheduler_process(intake_process: IntakeProcess) -> AsyncIterator[ServiceProcess]:
    """The scheduler beside intake: same database (its own schema), broker and keys."""
    # Only new events: a long-lived local broker may hold many old ones (CI's is fresh).
    env = {
        **intake_process.env,
        "PORTLINE_SCHEDULER_PORT": str(free_port()),
        "PORTLINE_KAFKA_CONSUMER_START": "latest",
    }
    await asyncio.to_thread(
        subprocess.run,
        [PORTLINE, "migrate", "scheduler"],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    log = intake_process.log.with_name("scheduler.log")
    proc = await asyncio.to_thread(_start, env, log, "scheduler")
    base = f"http://127.0.0.1:{env['PORTLINE_SCHEDULER_PORT']}"
    try:
        await _wait_ready(proc, base, log)
        await _until_consuming(env)
        yield ServiceProcess(base, env)
    finally:
        await _stop(proc)


async def _until_consuming(env: dict[str, str]) -> None:
    """Starting at `latest`, the scheduler sees only what is published after it joined its
    consumer group: send warm-up reports until one of them is linked."""
    import uuid as _uuid
    from datetime import UTC
    from datetime import date as _date
    from datetime import datetime as _datetime

    from services.intake.records import Identity
    from services.intake.reports import Protector
    from shared.bus import KafkaPublisher
    from shared.envelope import Envelope
    from shared.events import Consent, OverdoseReported
    from shared.outbox import OutgoingMessage
    from shared.sealing import load_keys
    from shared.settings import Settings
    from shared.topics import INTAKE_OVERDOSES, SCHEDULER_CASES
    from tests.support import read_topic

    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    sealer, indexer = load_keys(Settings(env="development", var_dir=Path(env["PORTLINE_VAR_DIR"])))
    protector = Protector(sealer, indexer)
    publisher = KafkaPublisher(bootstrap, client_id="e2e-warmup")
    await publisher.start()
    sent: set[str] = set()
    try:
        deadline = time.monotonic() + 180  # a loaded machine starts slowly
        while time.monotonic() < deadline:
            identity = Identity(
                family=f"Warm{_uuid.uuid4().hex[:6]}", given="Up", dob=_date(1980, 1, 1)
            )
            now = _datetime.now(UTC)
            event = OverdoseReported(
                report_id=_uuid.uuid4(),
                program_id="demo",
                source_kind="ems",
                source_org="e2e",
                source_ref="warm-up",
                incident_at=now,
                received_at=now,
                identity=protector.seal_identity(identity),
                blind_keys=protector.blind_keys(identity, facility=None),
                deidentified=False,
                opioid=True,
                any_drug=True,
                reasons=[],
                consent=Consent.DECLINED,  # linked, but nobody gets a task from a warm-up
            )
            sent.add(str(event.report_id))
            envelope = Envelope.wrap(event, source="/e2e", subject="warm-up", time=now)
            await publisher.publish(
                [OutgoingMessage(INTAKE_OVERDOSES.name, b"warm-up", envelope.to_bytes())]
            )
            linked = await read_topic(
                bootstrap,
                SCHEDULER_CASES.name,
                where=lambda r: Envelope.from_bytes(r.value).data.get("report_id") in sent,
                expect=1,
                timeout=3,
                settle=0,
            )
            if linked:
                return
        raise AssertionError("the scheduler never started consuming")
    finally:
        await publisher.stop()


@pytest.fixture(scope="session")
async def outreach_process(scheduler_process: ServiceProcess) -> AsyncIterator[ServiceProcess]:
    """Outreach beside intake and the scheduler: same database (its own schema), broker and
    keys. Like the scheduler it starts at `latest`, and is warmed up until it consumes."""
    env = {**scheduler_process.env, "PORTLINE_OUTREACH_PORT": str(free_port())}
    await asyncio.to_thread(
        subprocess.run,
        [PORTLINE, "migrate", "outreach"],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    log = Path(env["PORTLINE_VAR_DIR"]) / "outreach.log"
    proc = await asyncio.to_thread(_start, env, log, "outreach")
    base = f"http://127.0.0.1:{env['PORTLINE_OUTREACH_PORT']}"
    try:
        await _wait_ready(proc, base, log)
        await _until_outreach_consumes(env, base)
        yield ServiceProcess(base, env)
    finally:
        await _stop(proc)  # intake_process drops the schema


async def _until_outreach_consumes(env: dict[str, str], base: str) -> None:
    """Publish harmless events for a program nobody uses until both of outreach's consumers
    (scheduler cases, intake reports) have handled one: then both joined at `latest`."""
    from datetime import UTC
    from datetime import datetime as _datetime

    from shared.bus import KafkaPublisher
    from shared.envelope import Envelope
    from shared.events import CaseOpened, OverdoseReported
    from shared.outbox import OutgoingMessage

    publisher = KafkaPublisher(env["KAFKA_BOOTSTRAP_SERVERS"], client_id="e2e-outreach-warmup")
    await publisher.start()
    try:
        deadline = time.monotonic() + 180  # a loaded machine starts slowly
        async with httpx.AsyncClient(base_url=base) as client:
            while time.monotonic() < deadline:
                now = _datetime.now(UTC)
                case = CaseOpened(
                    case_id=uuid.uuid4(), program_id="warmup", person_id=uuid.uuid4(), opened_at=now
                )
                report = OverdoseReported(
                    report_id=uuid.uuid4(),
                    program_id="warmup",
                    source_kind="ems",
                    source_org="e2e",
                    source_ref="warm-up",
                    incident_at=now,
                    received_at=now,
                    deidentified=True,
                    opioid=True,
                    any_drug=True,
                    reasons=[],
                )
                messages = [
                    OutgoingMessage(
                        event.topic,
                        b"warm-up",
                        Envelope.wrap(event, source="/e2e", subject="warm-up", time=now).to_bytes(),
                    )
                    for event in (case, report)
                ]
                await publisher.publish(messages)
                await asyncio.sleep(1.0)
                metrics = (await client.get("/metrics")).text
                if all(
                    f'consumer="outreach.{name}",outcome="applied"' in metrics
                    for name in ("cases", "overdoses")
                ):
                    return
        raise AssertionError("outreach never started consuming")
    finally:
        await publisher.stop()


@pytest.fixture(scope="session")
async def reporting_process(
    intake_process: IntakeProcess, postgres_url: str
) -> AsyncIterator[ServiceProcess]:
    """Reporting beside intake (same database, its own schema; same broker and keys). It
    consumes every topic from the earliest retained event, as a fresh deployment does, so it
    needs no warm-up; tests tell their figures apart by a county of their own."""
    env = {
        **intake_process.env,
        "PORTLINE_REPORTING_PORT": str(free_port()),
        "PORTLINE_KAFKA_CONSUMER_START": "earliest",
    }
    await asyncio.to_thread(
        subprocess.run,
        [PORTLINE, "migrate", "reporting"],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    log = Path(env["PORTLINE_VAR_DIR"]) / "reporting.log"
    proc = await asyncio.to_thread(_start, env, log, "reporting")
    base = f"http://127.0.0.1:{env['PORTLINE_REPORTING_PORT']}"
    try:
        await _wait_ready(proc, base, log)
        yield ServiceProcess(base, env)
    finally:
        await _stop(proc)
        engine = create_engine(postgres_url, service="admin", schema="public")
        async with engine.begin() as conn:
            schema = env["PORTLINE_DB_SCHEMA_PREFIX"] + "reporting"
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()
