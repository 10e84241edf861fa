"""`make bench`, scheduler part: durable timers fired per second with 3 replicas, and the time
from an OverdoseReported to its TaskScheduled under a steady load.

    python -m tests.bench.scheduler_bench [--timers 20000] [--rate 200] [--seconds 20] ...

Needs DATABASE_URL (PostgreSQL; its database name must contain "test" or "bench", or set
BENCH_ALLOW_RESET=1) and KAFKA_BOOTSTRAP_SERVERS; scripts/bench.sh provides both.

1. Timers: a fresh schema `bench_scheduler_timers` (dropped and migrated), 20,000 due timers
   bulk-inserted, fired by 1 runner process (the baseline) and then, on a fresh set, by 3
   replica processes (tests/integration/timer_replica.py, whose effect writes one fired_log
   row per timer). The clock runs from the moment all replicas may start until every timer
   has a firing row; then fired_log, timer_firing and timer are checked for exactly once.
2. Latency: a fresh schema `bench_scheduler` (PORTLINE_DB_SCHEMA_PREFIX=bench_), `portline
   run scheduler` as a subprocess with development keys in a temp var dir, one warm-up report
   (so the consumer has caught up with whatever older events the topic holds), then
   OverdoseReported events for distinct people at a steady rate, published straight to
   port.intake.overdoses.v1. Each report's latency is from its publish call to the receipt of
   its case's TaskScheduled on port.scheduler.cases.v1 (matched via ReportLinked). It spans
   the consumer's fetch, the batch the report is applied in (up to 50 records of any
   partitions, one transaction: services/scheduler/batch.py), the outbox relay and the
   broker. The reports are all new people, the common case; "tasks/s achieved" below the
   rate means the scheduler falls behind and the latency grows with the run. On a 2-core
   machine it keeps up with 200/s at a p50 of about 0.1-0.2 s (one report per transaction,
   before batching: about 65-95/s, so the queue and the latency grew for the whole run).

Exit status: 0 when every timer fired exactly once and every report got its task; 1 when not;
2 for set-up errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any

import httpx
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake.records import Identity
from services.intake.reports import Protector
from services.scheduler.timers import TIMER, TIMER_FIRING
from shared.bus import KafkaPublisher, ensure_topics
from shared.clock import SystemClock
from shared.db import create_engine, resolve_url
from shared.envelope import Envelope
from shared.events import Consent, OverdoseReported
from shared.migrations import upgrade
from shared.outbox import OutgoingMessage
from shared.sealing import load_keys
from shared.settings import Settings
from shared.topics import INTAKE_OVERDOSES, SCHEDULER_CASES, TopicLayout
from tests.bench.intake_bench import BenchError, Report, free_port, percentile
from tests.bench.prepare import portline, refuse_unless_resettable
from tests.integration.timer_replica import FIRED_LOG, fired_log_metadata

ROOT = Path(__file__).resolve().parents[2]
TIMER_SCHEMA = "bench_scheduler_timers"
PREFIX = "bench_"
LATENCY_SCHEMA = f"{PREFIX}scheduler"


def check_database(database_url: str) -> None:
    """PostgreSQL, and a database whose schemas this benchmark may drop."""
    if not resolve_url(database_url, "scheduler").startswith("postgresql"):
        raise BenchError("the scheduler benchmark needs a PostgreSQL DATABASE_URL")
    try:
        refuse_unless_resettable(database_url)
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None


async def drop_schema(database_url: str, schema: str) -> None:
    check_database(database_url)
    engine = create_engine(database_url, service="bench", schema="public")
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


async def scalar(engine: AsyncEngine, query: sa.Select[Any]) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


def count(table: sa.Table) -> sa.Select[Any]:
    return sa.select(sa.func.count()).select_from(table)


# ---------------------------------------------------------------------------------------
# 1. Timers fired per second
# ---------------------------------------------------------------------------------------


@dataclass
class TimerRun:
    replicas: int
    timers: int
    seconds: float = 0.0
    by_replica: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.timers / self.seconds if self.seconds > 0 else 0.0


async def reset_timers(engine: AsyncEngine, n: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text("TRUNCATE timer, timer_firing, fired_log RESTART IDENTITY"))
    now = SystemClock().now()
    start = now - timedelta(minutes=1)
    rows = [
        {
            "key": f"{uuid.uuid4()}:due",
            "kind": "due",
            "task_id": None,
            "case_id": None,
            "due_at": start + timedelta(microseconds=i),
            "created_at": now,
        }
        for i in range(n)
    ]
    async with engine.begin() as conn:
        for i in range(0, n, 5_000):
            await conn.execute(TIMER.insert(), rows[i : i + 5_000])
        await conn.execute(sa.text("ANALYZE timer"))


def spawn_replica(
    name: str, run_dir: Path, go_file: Path, batch: int, timeout: float, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """tests/integration/timer_replica.py: fires due timers into fired_log until none are left,
    starting only once go_file exists."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.timer_replica",
            "--schema",
            TIMER_SCHEMA,
            "--replica",
            name,
            "--batch-size",
            str(batch),
            "--ready-file",
            str(run_dir / f"{name}.ready"),
            "--go-file",
            str(go_file),
            "--max-seconds",
            str(timeout + 60),
        ],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def run_timers(
    engine: AsyncEngine, work: Path, *, replicas: int, timers: int, batch: int, timeout: float
) -> TimerRun:
    result = TimerRun(replicas, timers)
    await reset_timers(engine, timers)
    run_dir = work / f"timers-{replicas}"
    run_dir.mkdir(parents=True, exist_ok=True)
    go_file = run_dir / "go"
    names = [f"r{i + 1}" for i in range(replicas)]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, IO[bytes]] = {}

    def output() -> str:
        return "\n".join(
            f"--- {n}:\n{(run_dir / f'{n}.log').read_text(errors='replace')[-3000:]}" for n in logs
        )

    try:
        for name in names:
            logs[name] = (run_dir / f"{name}.log").open("wb")
            procs[name] = spawn_replica(name, run_dir, go_file, batch, timeout, logs[name])
        deadline = time.monotonic() + 60
        while not all((run_dir / f"{n}.ready").exists() for n in names):
            if time.monotonic() > deadline:
                raise BenchError("timer replicas did not start within 60 s\n" + output())
            if any(p.poll() is not None for p in procs.values()):
                raise BenchError("a timer replica died on start-up\n" + output())
            await asyncio.sleep(0.05)
        go_file.touch()
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        fired = 0
        while True:
            fired = await scalar(engine, count(TIMER_FIRING))
            if fired >= timers:
                result.seconds = time.perf_counter() - started
                break
            if time.monotonic() > deadline:
                result.problems.append(
                    f"{replicas} runner(s): only {fired:,} of {timers:,} timers fired within "
                    f"{timeout:.0f} s"
                )
                break
            if all(p.poll() is not None for p in procs.values()):
                result.problems.append(
                    f"{replicas} runner(s): every replica exited with {fired:,} of {timers:,} "
                    "fired\n" + output()
                )
                break
            await asyncio.sleep(0.02)
        for name, proc in procs.items():
            try:
                rc = await asyncio.to_thread(proc.wait, timeout=30)
            except subprocess.TimeoutExpired:
                result.problems.append(f"replica {name} did not exit within 30 s")
                continue
            if rc != 0:
                result.problems.append(f"replica {name} exited {rc}\n" + output())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for log_file in logs.values():
            log_file.close()

    # Exactly once: one effect per timer, one firing row per timer, the effect committed
    # together with its own replica's firing row, no timer left unfired.
    effects = await scalar(engine, count(FIRED_LOG))
    distinct = await scalar(engine, sa.select(sa.func.count(sa.distinct(FIRED_LOG.c.key))))
    firings = await scalar(engine, count(TIMER_FIRING))
    unfired = await scalar(engine, count(TIMER).where(TIMER.c.fired_at.is_(None)))
    mismatched = await scalar(
        engine,
        sa.select(sa.func.count())
        .select_from(FIRED_LOG.join(TIMER_FIRING, TIMER_FIRING.c.key == FIRED_LOG.c.key))
        .where(TIMER_FIRING.c.replica != FIRED_LOG.c.replica),
    )
    if (effects, distinct, firings, unfired, mismatched) != (timers, timers, timers, 0, 0):
        result.problems.append(
            f"{replicas} runner(s): not exactly once: {effects} effects ({distinct} distinct), "
            f"{firings} firing rows, {unfired} unfired, {mismatched} effects under another "
            f"replica's firing; expected {timers} / {timers} / {timers} / 0 / 0"
        )
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(FIRED_LOG.c.replica, sa.func.count()).group_by(FIRED_LOG.c.replica)
        )
        result.by_replica = {r: int(c) for r, c in sorted(rows.all())}
    if replicas > 1 and len(result.by_replica) != replicas:
        result.problems.append(f"not every replica fired timers: {result.by_replica}")
    return result


async def timers_phase(
    database_url: str, work: Path, *, timers: int, batch: int, timeout: float
) -> list[TimerRun]:
    await drop_schema(database_url, TIMER_SCHEMA)
    engine = create_engine(database_url, service="scheduler", schema=TIMER_SCHEMA)
    try:
        await upgrade(engine, service="scheduler", schema=TIMER_SCHEMA)
        async with engine.begin() as conn:
            await conn.run_sync(fired_log_metadata.create_all)
        runs = []
        for replicas in (1, 3):
            print(f"timers: {timers:,} due timers, {replicas} runner process(es), batch {batch}")
            run = await run_timers(
                engine, work, replicas=replicas, timers=timers, batch=batch, timeout=timeout
            )
            print(f"  {run.per_second:,.0f} timers/s ({run.seconds:.2f} s) {run.by_replica}")
            runs.append(run)
        return runs
    finally:
        await engine.dispose()


# ---------------------------------------------------------------------------------------
# 2. OverdoseReported -> TaskScheduled latency
# ---------------------------------------------------------------------------------------


@dataclass
class LatencyRun:
    rate: float
    reports: int
    send_seconds: float = 0.0
    warmup_seconds: float = 0.0
    last_task_after: float = 0.0
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Cases:
    """Reads port.scheduler.cases.v1 from its end: report -> case (ReportLinked) and the
    receipt time of each case's first TaskScheduled."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="portline-scheduler-bench",
        )
        self.case_of: dict[uuid.UUID, uuid.UUID] = {}
        self.task_at: dict[uuid.UUID, float] = {}
        self.changed = asyncio.Event()

    async def start(self) -> None:
        await self.consumer.start()
        # Assigning a partition makes the client fetch the topic's metadata (all partitions).
        self.consumer.assign([TopicPartition(SCHEDULER_CASES.name, 0)])
        deadline = time.monotonic() + 30
        while not (partitions := self.consumer.partitions_for_topic(SCHEDULER_CASES.name)):
            if time.monotonic() > deadline:
                raise BenchError(f"no partitions of {SCHEDULER_CASES.name} within 30 s")
            await asyncio.sleep(0.1)
        tps = [TopicPartition(SCHEDULER_CASES.name, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, before anything is published
            await self.consumer.position(tp)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batches = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    if record.value is None:
                        continue
                    envelope = Envelope.from_bytes(record.value)
                    if envelope.type == "ReportLinked":
                        report_id = uuid.UUID(envelope.data["report_id"])
                        self.case_of[report_id] = uuid.UUID(envelope.data["case_id"])
                    elif envelope.type == "TaskScheduled":
                        self.task_at.setdefault(uuid.UUID(envelope.data["case_id"]), now)
            if batches:
                self.changed.set()

    def task_time(self, report_id: uuid.UUID) -> float | None:
        case_id = self.case_of.get(report_id)
        return None if case_id is None else self.task_at.get(case_id)

    async def stop(self) -> None:
        await self.consumer.stop()


def letters(i: int) -> str:
    """A distinct all-letter name part for i (names are normalized to letters)."""
    out = ""
    for _ in range(4):
        i, r = divmod(i, 26)
        out += "abcdefghijklmnopqrstuvwxyz"[r]
    return out.capitalize()


def overdose(protector: Protector, i: int, tag: str) -> tuple[uuid.UUID, OutgoingMessage]:
    """A consented OverdoseReported for a person no other report names (unique name, date of
    birth and phone), as intake would publish it."""
    now = SystemClock().now()
    identity = Identity(
        family=f"Bench{letters(i)}{tag.lower()}",
        given=f"Pat{letters(i * 7 + 3)}",
        dob=date(1950, 1, 1) + timedelta(days=3 * i + (7 if tag == "W" else 0)),
        phones=(f"336-{200 + i // 10_000:03d}-{i % 10_000:04d}",),
    )
    blind = protector.blind_keys(identity, facility=None)
    report_id = uuid.uuid4()
    event = OverdoseReported(
        report_id=report_id,
        program_id="demo",
        source_kind="ems",
        source_org="bench-ems",
        source_ref=f"{tag}{i}",
        incident_at=now - timedelta(minutes=20),
        received_at=now,
        identity=protector.seal_identity(identity),
        blind_keys=blind,
        deidentified=identity.deidentified,
        opioid=True,
        any_drug=True,
        reasons=[],
        consent=Consent.ACCEPTED,
    )
    key = blind.name_dob or str(report_id)
    envelope = Envelope.wrap(event, source="/portline/intake", subject=key, time=now)
    return report_id, OutgoingMessage(INTAKE_OVERDOSES.name, key.encode(), envelope.to_bytes())


def start_scheduler(env: dict[str, str], var_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log_path = var_dir / "scheduler.log"
    env = {**env, "PORTLINE_SCHEDULER_PORT": str(port), "PORTLINE_HOST": "127.0.0.1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [portline(), "run", "scheduler"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"scheduler exited with {proc.returncode}:\n{log_tail(var_dir)}")
        try:
            r = httpx.get(f"{base_url}/readyz", timeout=2)
            if r.status_code == 200:
                return proc, base_url
            last = r.text
        except httpx.TransportError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    stop_process(proc)
    raise BenchError(f"scheduler not ready within 90 s ({last}):\n{log_tail(var_dir)}")


def log_tail(var_dir: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        text = (var_dir / "scheduler.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
    return ""


async def skip_backlog(bootstrap: str, group_id: str, topic: str, partitions: int) -> int:
    """Commit the end of `topic` as `group_id`'s position; how many events that skips.

    The latency run measures its own reports on a fresh schema. Events other runs left on
    the local broker (intake's benchmark publishes hundreds per run, sealed with other keys)
    would otherwise be worked through first, each dead-lettered, before the warm-up report.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]  # as ensure_topics made it
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        skipped = 0
        for tp, end in ends.items():
            committed = await consumer.committed(tp)
            skipped += end - (committed or 0)
        await consumer.commit(dict(ends))
        return skipped
    finally:
        await consumer.stop()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


async def latency_phase(
    database_url: str,
    bootstrap: str,
    var_dir: Path,
    *,
    rate: float,
    seconds: float,
    catch_up: float,
    drain: float,
) -> LatencyRun:
    n = round(rate * seconds)
    result = LatencyRun(rate, n)
    await drop_schema(database_url, LATENCY_SCHEMA)
    await ensure_topics(bootstrap, TopicLayout())
    env = {
        **os.environ,
        "PORTLINE_ENV": "development",
        "PORTLINE_VAR_DIR": str(var_dir),
        "PORTLINE_DB_SCHEMA_PREFIX": PREFIX,
    }
    # The scheduler's development keys: created here, read by the service from the same file.
    sealer, indexer = load_keys(Settings(env="development", var_dir=var_dir))
    protector = Protector(sealer, indexer)
    await asyncio.to_thread(
        subprocess.run,
        [portline(), "migrate", "scheduler"],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=180,
        capture_output=True,
    )
    skipped = await skip_backlog(
        bootstrap,
        f"portline-{PREFIX}scheduler-overdoses",
        INTAKE_OVERDOSES.name,
        TopicLayout().partitions_of(INTAKE_OVERDOSES),
    )
    if skipped:
        print(f"latency: skipped {skipped:,} older events on {INTAKE_OVERDOSES.name}")
    print("latency: starting the scheduler ...")
    proc, base_url = await asyncio.to_thread(start_scheduler, env, var_dir)
    print(f"  scheduler pid {proc.pid}, {base_url}")
    cases = Cases(bootstrap)
    publisher: KafkaPublisher | None = None
    stop = asyncio.Event()
    reader: asyncio.Task[None] | None = None
    try:
        await cases.start()
        publisher = KafkaPublisher(bootstrap, client_id="portline-scheduler-bench")
        await publisher.start()
        reader = asyncio.create_task(cases.run(stop))

        async def wait_tasks(report_ids: Sequence[uuid.UUID], timeout: float) -> int:
            deadline = time.monotonic() + timeout
            while True:
                got = sum(1 for r in report_ids if cases.task_time(r) is not None)
                left = deadline - time.monotonic()
                if got == len(report_ids) or left <= 0:
                    return got
                if reader is not None and reader.done():
                    reader.result()  # raises what stopped it
                    return got
                cases.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cases.changed.wait(), min(left, 1.0))

        # Warm-up: the consumer group may first work through older events on the topic.
        warm_id, warm_message = overdose(protector, 0, "W")
        started = time.perf_counter()
        await publisher.publish([warm_message])
        if await wait_tasks([warm_id], catch_up) != 1:
            raise BenchError(
                f"warm-up report got no TaskScheduled within {catch_up:.0f} s:\n{log_tail(var_dir)}"
            )
        result.warmup_seconds = time.perf_counter() - started
        print(f"  caught up: warm-up task after {result.warmup_seconds:.1f} s")

        messages = [overdose(protector, i, "M") for i in range(1, n + 1)]
        sent: dict[uuid.UUID, float] = {}
        pending: list[asyncio.Task[None]] = []
        print(f"  publishing {n:,} OverdoseReported at {rate:.0f}/s for {seconds:.0f} s")
        t0 = time.perf_counter()
        for i, (report_id, message) in enumerate(messages):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[report_id] = time.perf_counter()
            pending.append(asyncio.create_task(publisher.publish([message])))
        outcomes = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 60)
        result.send_seconds = time.perf_counter() - t0
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            result.problems.append(f"{len(failed)} publishes failed: {failed[0]!r}")
        got = await wait_tasks(list(sent), drain)
        for report_id, at in sent.items():
            task_at = cases.task_time(report_id)
            if task_at is not None:
                result.latencies.append(task_at - at)
                result.last_task_after = max(result.last_task_after, task_at - t0)
        if got != n:
            result.problems.append(
                f"only {got:,} of {n:,} reports got a TaskScheduled within {drain:.0f} s of "
                "the last publish"
            )
    finally:
        stop.set()
        if reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 10)
        if publisher is not None:
            await publisher.stop()
        with contextlib.suppress(Exception):
            await cases.stop()
        rc = await asyncio.to_thread(stop_process, proc)
        if rc not in (0, -signal.SIGINT):
            result.problems.append(f"scheduler exited with {rc} on SIGINT:\n{log_tail(var_dir)}")
    return result


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.scheduler_bench", description=__doc__)
    p.add_argument("--timers", type=int, default=20_000, help="due timers per run")
    p.add_argument(
        "--batch-size",
        type=int,
        default=Settings.model_fields["scheduler_timer_batch"].default,
        help="timers per batch (default: the scheduler's own setting)",
    )
    p.add_argument("--timer-timeout", type=float, default=300, help="seconds per timer run")
    p.add_argument("--rate", type=float, default=200, help="OverdoseReported per second")
    p.add_argument("--seconds", type=float, default=20, help="seconds of steady load")
    p.add_argument(
        "--catch-up", type=float, default=300, help="seconds for the warm-up report's task"
    )
    p.add_argument(
        "--drain", type=float, default=180, help="seconds after the last publish for the tasks"
    )
    p.add_argument("--no-timers", action="store_true", help="skip the timer benchmark")
    p.add_argument("--no-latency", action="store_true", help="skip the latency benchmark")
    return p.parse_args(argv)


async def run(args: argparse.Namespace, work: Path) -> int:
    database_url = os.environ.get("DATABASE_URL")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not database_url or not bootstrap:
        raise BenchError("set DATABASE_URL (PostgreSQL) and KAFKA_BOOTSTRAP_SERVERS")
    check_database(database_url)
    report = Report()
    runs: list[TimerRun] = []
    latency: LatencyRun | None = None
    if not args.no_timers:
        runs = await timers_phase(
            database_url,
            work,
            timers=args.timers,
            batch=args.batch_size,
            timeout=args.timer_timeout,
        )
        for r in runs:
            report.problems += r.problems
    if not args.no_latency:
        latency_dir = work / "scheduler-var"
        latency_dir.mkdir(parents=True, exist_ok=True)
        latency = await latency_phase(
            database_url,
            bootstrap,
            latency_dir,
            rate=args.rate,
            seconds=args.seconds,
            catch_up=args.catch_up,
            drain=args.drain,
        )
        report.problems += latency.problems

    lines = report.lines
    lines.append("=" * 78)
    lines.append(f"PORTline scheduler benchmark: PostgreSQL + Kafka, {os.cpu_count()} CPUs")
    if runs:
        report.head(
            f"durable timers ({args.timers:,} due, batch {args.batch_size}, one effect row each)"
        )
        for r in runs:
            label = "1 runner (baseline)" if r.replicas == 1 else f"{r.replicas} replicas"
            report.row(f"timers/s, {label}", f"{r.per_second:>9,.0f} /s      ({r.seconds:.2f} s)")
        for r in runs:
            if r.replicas > 1:
                report.row(
                    f"fired per replica ({r.replicas} replicas)",
                    ", ".join(f"{k} {v:,}" for k, v in r.by_replica.items()),
                )
        once = all(not r.problems for r in runs)
        report.row("fired exactly once (effects = firings = N)", "yes" if once else "NO")
        if len(runs) == 2 and runs[0].per_second:
            report.head("ratio (same run)")
            report.row(
                f"{runs[1].replicas} replicas / 1 runner",
                f"{runs[1].per_second / runs[0].per_second:.2f}x",
            )
    if latency is not None:
        lat = sorted(latency.latencies)
        report.head(
            f"OverdoseReported -> TaskScheduled ({latency.rate:.0f} reports/s for "
            f"{latency.reports / latency.rate:.0f} s, Kafka to Kafka)"
        )
        sent_rate = latency.reports / latency.send_seconds if latency.send_seconds else 0.0
        report.row("reports published", f"{latency.reports:,} at {sent_rate:.0f}/s")
        report.row(
            "latency p50 / p99 / max",
            f"{percentile(lat, 0.5) * 1000:.1f} / {percentile(lat, 0.99) * 1000:.1f} / "
            f"{(lat[-1] if lat else float('nan')) * 1000:.1f} ms",
        )
        report.row("reports with a TaskScheduled", f"{len(lat):,} of {latency.reports:,}")
        if latency.last_task_after:
            report.row(
                "tasks/s achieved (first publish to last task)",
                f"{len(lat) / latency.last_task_after:,.0f} /s      "
                f"(last task {latency.last_task_after:.1f} s after the first publish)",
            )
        report.row("warm-up (consumer caught up after)", f"{latency.warmup_seconds:.1f} s")
    report.head("result")
    report.row("everything fired once, every report a task", "FAIL" if report.problems else "PASS")
    lines.append("=" * 78)
    print("\n".join(lines))
    for problem in report.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if report.problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pl-sched-bench-") as tmp:
        try:
            return asyncio.run(run(args, Path(tmp)))
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        except subprocess.CalledProcessError as exc:
            print(f"bench: {exc}\n{(exc.stderr or b'').decode(errors='replace')}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
