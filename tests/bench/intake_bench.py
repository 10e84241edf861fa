"""`make bench`: PORTline intake throughput, end to end, against parse-only baselines.

    python -m tests.bench.intake_bench [--messages 30000] [--window 1] [--sqlite] ...

What it does (scripts/bench.sh prepares Kafka, PostgreSQL and a fresh `intake` schema):

1. generates a deterministic ED feed (0.5 % opioid overdoses, the rest ordinary visits,
   A01/A03/A04/A08, unique MSH-10) and EMS JSON run reports (10 % overdoses);
2. measures, in this process and on the same messages, a plain hl7apy parse, a plain
   python-hl7 parse and PORTline's own screen + classify (the baselines);
3. starts `portline run intake`, waits for /readyz, warms up, then drives the MLLP listener
   with 8 concurrent connections, each sending the next message only after the previous
   one's ACK (original mode; `--window K` allows K in flight per connection, though the
   listener itself still handles one frame per connection at a time);
4. checks that nothing was lost: every message AA, one inbound row per message, one
   OverdoseReported per overdose in the outbox, all of them published to Kafka;
5. posts EMS JSON run reports over HTTP/1.1 keep-alive with 24 concurrent requests (one
   report per request; `--ems-batch K` posts K per request), and checks them the same way;
6. prints a table with rates, latencies and ratios against the baselines, the mean group
   commit size and who used the CPUs (a warning when unrelated processes did).

For investigating: `--overdose-share` (0 for a feed without overdoses; the report counts the
pauses of every connection and how many held an overdose), `--profile` (cProfile of the
measured MLLP phase), `--count-sql` (SQL statements per message), `--experiment NAME`
(what-if changes applied to the service process only, see tests/bench/serve_intake.py),
`--sqlite`, `--connections N`. For what one transaction costs per client stack, see
tests/bench/db_micro.py.

The exit status is 0 when everything was stored and acknowledged, even when a throughput
target is missed (this is a report); 1 when anything was lost or failed; 2 for set-up errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import pstats
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake.classify import Definition, classify_ed
from services.intake.ems_json import EmsRunReportIn, to_record
from services.intake.hl7 import read_header, screen
from services.intake.pipeline import classify_run
from services.intake.pipeline.hl7 import dedupe_key as partner_dedupe_key
from shared.db import create_engine
from shared.topics import INTAKE_OVERDOSES, INTAKE_REJECTED
from tests.bench.messages import EmsCase, HL7Case, ems_reports, hl7_messages
from tests.bench.prepare import demo_keys, portline, prepare
from tests.bench.serve_intake import EXPERIMENTS
from tests.hl7_builder import ack_fields

try:
    import sniffio  # noqa: F401
except ImportError:
    # Without sniffio, httpcore retries `import sniffio` on every request, and each failed
    # import walks sys.path: ~13 % of this client's CPU (py-spy). A None entry makes the import
    # fail at once; httpcore falls back to asyncio exactly as before.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
FS_CR = b"\x1c\r"
TARGET_MLLP = 3000.0
TARGET_EMS = 1500.0
SEED = 20261120
CLK_TCK = os.sysconf("SC_CLK_TCK")
SLOW_ACK = 0.004
"""An ACK slower than this (seconds) counts as stalled (see `stalls`)."""
STALL_GAP = 0.002
"""Slow messages sent within this time of each other belong to one stall."""


class BenchError(Exception):
    """The benchmark could not run (set-up problem): exit 2."""


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stalls(slow: Sequence[tuple[float, bool]], gap: float = STALL_GAP) -> list[tuple[int, bool]]:
    """Group slow messages (when sent, overdose?) sent close together: (how many messages,
    whether one was an overdose) per stall. With every connection waiting for its ACK, a
    stall of all of them is a pause of the whole pipeline, not one slow message."""
    found: list[tuple[int, bool]] = []
    last = -math.inf
    for sent, overdose in sorted(slow):
        if found and sent - last < gap:
            count, had = found[-1]
            found[-1] = (count + 1, had or overdose)
        else:
            found.append((1, overdose))
        last = sent
    return found


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def dedupe_key(message: str) -> str:
    """What intake stores as inbound_message.dedupe_key for the demo hospital's message."""
    return partner_dedupe_key("demo-hospital", read_header(message))


def chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------------------
# CPU accounting: who used the two cores during a phase
# ---------------------------------------------------------------------------------------


def _proc_ticks() -> dict[int, tuple[str, int, int]]:
    """pid -> (command name, user + system clock ticks, parent pid), for every process we
    can read."""
    found: dict[int, tuple[str, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(entry)] = (name, int(fields[11]) + int(fields[12]), int(fields[1]))
    return found


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass
class CpuSample:
    at: float
    procs: dict[int, tuple[str, int, int]]
    machine: tuple[int, int]

    @classmethod
    def take(cls) -> CpuSample:
        return cls(time.perf_counter(), _proc_ticks(), _machine_ticks())


def _family(procs: dict[int, tuple[str, int, int]], root: int) -> set[int]:
    """`root` and every process descended from it (intake's workers and parse pools)."""
    children: dict[int, list[int]] = {}
    for pid, (_name, _ticks, ppid) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def cpu_share(before: CpuSample, after: CpuSample, server_pid: int) -> dict[str, float]:
    """Percent of one core used per group (intake with its worker and parse processes,
    postgres, kafka, client) and in total."""
    elapsed = after.at - before.at
    groups: dict[str, float] = {"intake": 0.0, "postgres": 0.0, "kafka": 0.0, "bench client": 0.0}
    intake = _family(after.procs, server_pid)
    for pid, (name, ticks, _ppid) in after.procs.items():
        delta = ticks - before.procs.get(pid, (name, 0, 0))[1]
        if pid in intake:
            group = "intake"
        elif pid == os.getpid():
            group = "bench client"
        elif name.startswith("postgres"):
            group = "postgres"
        elif name == "java":
            group = "kafka"
        else:
            continue
        groups[group] += delta / CLK_TCK / elapsed * 100
    busy = after.machine[0] - before.machine[0]
    total = after.machine[1] - before.machine[1]
    machine = busy / max(total, 1) * 100 * (os.cpu_count() or 1)
    groups["other processes"] = max(0.0, machine - sum(groups.values()))
    groups["machine"] = machine
    return groups


def cpu_line(cpu: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.0f}" for k, v in cpu.items() if k != "machine")
    return f"{parts}; machine {cpu['machine']:.0f} of {100 * (os.cpu_count() or 1)}"


OTHER_LOAD_WARNING = 15.0
"""Percent of a core used by unrelated processes above which the figures are suspect."""


# ---------------------------------------------------------------------------------------
# Baselines: parse-only rates of the same messages, in this process
# ---------------------------------------------------------------------------------------


@dataclass
class Rate:
    name: str
    messages: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")


def measure(name: str, work: Callable[[str], object], messages: Sequence[str], cap: float) -> Rate:
    for message in messages[:20]:  # imports, caches
        work(message)
    done = 0
    start = time.perf_counter()
    deadline = start + cap
    for message in messages:
        work(message)
        done += 1
        if done % 100 == 0 and time.perf_counter() > deadline:
            break
    return Rate(name, done, time.perf_counter() - start)


def baselines(cases: Sequence[HL7Case], *, hl7apy_sample: int, cap: float) -> list[Rate]:
    import hl7
    from hl7apy.parser import parse_message

    messages = [c.message for c in cases]
    step = max(1, len(messages) // max(hl7apy_sample, 1))
    sample = messages[::step][:hl7apy_sample]

    def hl7apy_parse(message: str) -> object:
        return parse_message(message, find_groups=False)

    def screen_classify(message: str) -> object:
        screened = screen(message)
        return classify_ed(codes=screened.codes, texts=screened.texts)

    return [
        measure("hl7apy parse_message(find_groups=False)", hl7apy_parse, sample, cap),
        measure("python-hl7 hl7.parse", hl7.parse, messages, cap),
        measure("PORTline screen + classify_ed", screen_classify, messages, cap),
    ]


def check_feed(cases: Sequence[HL7Case], reports: Sequence[EmsCase]) -> None:
    """The generator's overdose labels must agree with PORTline's classifier (opioid)."""
    for c in cases:
        s = screen(c.message)
        if classify_ed(codes=s.codes, texts=s.texts).is_overdose(Definition.OPIOID) != c.overdose:
            raise BenchError(f"feed generator: {c.control_id} is mislabelled")
    for r in reports:
        decision = classify_run(to_record(EmsRunReportIn.model_validate(r.body)))
        if decision.is_overdose(Definition.OPIOID) != r.overdose:
            raise BenchError(f"feed generator: {r.pcr_number} is mislabelled")


# ---------------------------------------------------------------------------------------
# The intake service as a subprocess
# ---------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    mllp_port: int
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def mutual_tls(env: dict[str, str], server_env: dict[str, str], var_dir: Path) -> ssl.SSLContext:
    """Certificates for this run (a CA, the listener's, the demo hospital's client one): the
    listener asks for client certificates and the hospital is registered by its own; the
    client context the driver connects with."""
    from tests.certs import CertificateAuthority

    directory = var_dir / "tls"
    directory.mkdir(exist_ok=True)
    ca = CertificateAuthority(directory)
    server, client = ca.issue("intake", server=True), ca.issue("demo-hospital-engine")
    server_env.update(
        PORTLINE_INTAKE_MLLP_TLS_CERT=str(server.cert),
        PORTLINE_INTAKE_MLLP_TLS_KEY=str(server.key),
        PORTLINE_INTAKE_MLLP_TLS_CLIENT_CA=str(ca.cert),
    )
    register = ["partners", "add-certificate", "--id", "demo-hospital"]
    subprocess.run(
        [portline(), *register, "--certificate", str(client.cert)],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    context = ssl.create_default_context(cafile=str(ca.cert))
    context.load_cert_chain(client.cert, client.key)
    return context


def start_server(env: dict[str, str], var_dir: Path, *, wrapper: bool) -> Server:
    http_port, mllp_port = free_port(), free_port()
    env = {
        **env,
        "PORTLINE_INTAKE_PORT": str(http_port),
        "PORTLINE_MLLP_PORT": str(mllp_port),
        "PORTLINE_HOST": "127.0.0.1",
    }
    command = (
        [sys.executable, "-m", "tests.bench.serve_intake"]
        if wrapper
        else [portline(), "run", "intake"]
    )
    log_path = var_dir / "intake.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{http_port}", mllp_port, log_path)
    deadline = time.monotonic() + 90
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"intake exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            r = httpx.get(f"{server.base_url}/readyz", timeout=2)
            if r.status_code == 200:
                return server
            last = r.text
        except httpx.TransportError as exc:
            last = type(exc).__name__
        time.sleep(0.25)
    stop_server(server)
    raise BenchError(f"intake not ready within 90 s ({last}):\n{server.log_tail()}")


def stop_server(server: Server, timeout: float = 30) -> int:
    """SIGINT (what Ctrl-C does), then SIGKILL if it does not stop in time."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=10)
    return server.proc.returncode


def scrape_batches(base_url: str) -> tuple[float, float]:
    """(sum, count) of portline_intake_batch_size from /metrics."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for suffix in values:
            if line.startswith(f"portline_intake_batch_size_{suffix} "):
                values[suffix] = float(line.split()[1])
    return values["sum"], values["count"]


# ---------------------------------------------------------------------------------------
# MLLP driver
# ---------------------------------------------------------------------------------------


@dataclass
class DriveResult:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    mismatched: int = 0
    errors: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    slow: list[tuple[float, bool]] = field(default_factory=list)
    """(when sent, whether an overdose) of every message whose ACK took over SLOW_ACK."""


def _record_ack(result: DriveResult, raw: bytes, control_id: str, latency: float) -> None:
    code, echoed, _err = ack_fields(raw.strip(b"\x0b\x1c\r").decode("utf-8", "replace"))
    result.latencies.append(latency)
    result.codes[code] = result.codes.get(code, 0) + 1
    if echoed != control_id:
        result.mismatched += 1
    elif code == "AA":
        result.acked.add(control_id)


async def _connection(
    port: int,
    cases: Sequence[HL7Case],
    window: int,
    result: DriveResult,
    ready: asyncio.Event,
    opened: Callable[[], None],
    tls: ssl.SSLContext | None = None,
) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
    )
    opened()
    await ready.wait()
    clock = time.perf_counter
    try:
        if window <= 1:
            for case in cases:
                sent = clock()
                writer.write(case.frame)
                await writer.drain()
                # No per-ACK wait_for (a task per message on this loop's CPU budget): the
                # phase's own timeout cancels a connection that hangs.
                raw = await reader.readuntil(FS_CR)
                latency = clock() - sent
                _record_ack(result, raw, case.control_id, latency)
                if latency > SLOW_ACK:
                    result.slow.append((sent, case.overdose))
            return
        slots = asyncio.Semaphore(window)
        in_flight: deque[tuple[str, float]] = deque()

        async def send() -> None:
            for case in cases:
                await slots.acquire()
                in_flight.append((case.control_id, clock()))
                writer.write(case.frame)
                await writer.drain()

        async def receive() -> None:
            for _ in cases:
                raw = await reader.readuntil(FS_CR)
                control_id, sent = in_flight.popleft()
                slots.release()
                _record_ack(result, raw, control_id, clock() - sent)

        await asyncio.gather(send(), receive())
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def drive_mllp(
    port: int,
    cases: Sequence[HL7Case],
    *,
    connections: int,
    window: int,
    timeout: float,
    on_start: Callable[[], None] = lambda: None,
    on_end: Callable[[], None] = lambda: None,
    tls: ssl.SSLContext | None = None,
) -> DriveResult:
    """Send every case over `connections` connections; the clock runs from the moment all are
    open until the last ACK arrived."""
    result = DriveResult()
    shares = [cases[i::connections] for i in range(connections)]
    shares = [s for s in shares if s]
    ready = asyncio.Event()
    all_open = asyncio.Event()
    opened_count = 0

    def opened() -> None:
        nonlocal opened_count
        opened_count += 1
        if opened_count == len(shares):
            all_open.set()

    tasks = [
        asyncio.create_task(_connection(port, share, window, result, ready, opened, tls))
        for share in shares
    ]
    try:
        await asyncio.wait_for(all_open.wait(), 30)
        on_start()
        start = time.perf_counter()
        ready.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)
        result.seconds = time.perf_counter() - start
        on_end()
    except TimeoutError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        result.errors.append(f"MLLP phase did not finish within {timeout:.0f} s")
        return result
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.errors.append(f"connection failed: {type(outcome).__name__}: {outcome}")
    return result


# ---------------------------------------------------------------------------------------
# EMS driver
# ---------------------------------------------------------------------------------------


@dataclass
class EmsResult:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    responses: list[tuple[int, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def drive_ems(
    base_url: str,
    api_key: str,
    cases: Sequence[EmsCase],
    *,
    concurrency: int,
    timeout: float,
    per_request: int = 1,
) -> EmsResult:
    """POST the reports, one per request (or `per_request` as {"reports": [...]})."""
    result = EmsResult()
    if per_request <= 1:
        bodies = [json.dumps(c.body).encode() for c in cases]
    else:
        bodies = [
            json.dumps({"reports": [c.body for c in cases[i : i + per_request]]}).encode()
            for i in range(0, len(cases), per_request)
        ]
    clock = time.perf_counter
    next_index = 0
    # A minimal keep-alive HTTP/1.1 client per worker: on 2 cores the load generator competes
    # with the service, and httpx spends more CPU per request than the service does. The
    # service sees ordinary HTTP/1.1 requests either way.
    url = urlsplit(base_url)
    clients = [
        RawHttpClient(url.hostname or "127.0.0.1", url.port or 80, api_key)
        for _ in range(concurrency)
    ]

    async def worker(client: RawHttpClient) -> None:
        nonlocal next_index
        while next_index < len(bodies):
            body = bodies[next_index]
            next_index += 1
            sent = clock()
            status, content = await client.post("/v1/ems/run-reports", body)
            result.latencies.append(clock() - sent)
            result.responses.append((status, content))

    await asyncio.gather(*(client.connect() for client in clients))
    try:
        start = clock()
        workers = [asyncio.create_task(worker(client)) for client in clients]
        try:
            outcomes = await asyncio.wait_for(
                asyncio.gather(*workers, return_exceptions=True), timeout
            )
        except TimeoutError:
            result.errors.append(f"EMS phase did not finish within {timeout:.0f} s")
            return result
        result.seconds = clock() - start
    finally:
        for client in clients:
            client.close()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.errors.append(f"EMS request failed: {type(outcome).__name__}: {outcome}")
    return result


class RawHttpClient:
    """One keep-alive HTTP/1.1 connection: POST a JSON body, read status and body."""

    def __init__(self, host: str, port: int, api_key: str) -> None:
        self._host, self._port = host, port
        self._head = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\nConnection: keep-alive\r\n"
        ).encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self._reader is not None
        assert self._writer is not None
        self._writer.write(
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\n"
            + self._head
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self._reader.readexactly(length)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def check_ems_responses(result: EmsResult, cases: Sequence[EmsCase]) -> list[str]:
    problems: list[str] = []
    by_pcr = {c.pcr_number: c for c in cases}
    statuses: dict[int, int] = {}
    wrong = 0
    answered = 0
    for status, content in result.responses:
        statuses[status] = statuses.get(status, 0) + 1
        if status != 200:
            continue
        for record in json.loads(content)["results"]:
            answered += 1
            case = by_pcr.get(record["pcr_number"])
            expected = "accepted" if case and case.overdose else "not_overdose"
            if case is None or record["status"] != expected or record["overdose"] != case.overdose:
                wrong += 1
    if answered != len(cases):
        problems.append(f"EMS: {answered} results for {len(cases)} reports")
    if statuses.keys() - {200}:
        problems.append(f"EMS: HTTP statuses {statuses}")
    if wrong:
        problems.append(f"EMS: {wrong} responses with an unexpected status or overdose flag")
    return problems


# ---------------------------------------------------------------------------------------
# Database checks
# ---------------------------------------------------------------------------------------


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> int:
    async with engine.connect() as conn:
        value = (await conn.execute(sa.text(sql), params)).scalar_one()
    return int(value or 0)


async def count_keys(engine: AsyncEngine, keys: Sequence[str]) -> int:
    found = 0
    async with engine.connect() as conn:
        for part in chunks(keys, 2000):
            stmt = sa.text(
                "select count(*) from inbound_message where dedupe_key in :keys"
            ).bindparams(sa.bindparam("keys", expanding=True))
            found += int((await conn.execute(stmt, {"keys": list(part)})).scalar_one())
    return found


async def statuses(engine: AsyncEngine, channel: str) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "select status, count(*) from inbound_message where channel = :c group by status"
            ),
            {"c": channel},
        )
        return {str(s): int(n) for s, n in rows.all()}


async def wait_published(engine: AsyncEngine, timeout: float) -> tuple[int, float]:
    """(unpublished outbox rows left, seconds waited), polling until none or timeout."""
    start = time.monotonic()
    while True:
        left = await scalar(engine, "select count(*) from outbox where published_at is null")
        if left == 0 or time.monotonic() - start > timeout:
            return left, time.monotonic() - start
        await asyncio.sleep(0.5)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def row(self, label: str, value: str) -> None:
        self.lines.append(f"  {label:<46} {value}")

    def head(self, title: str) -> None:
        self.lines.append("")
        self.lines.append(title)


def _share(text: str) -> float:
    """A share from 0 to 1, for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share is from 0 to 1, not {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.intake_bench", description=__doc__)
    p.add_argument("--messages", type=int, default=30_000, help="measured ADT messages")
    p.add_argument("--warmup", type=int, default=500, help="warm-up messages (not timed)")
    p.add_argument(
        "--overdose-share",
        type=_share,
        default=0.005,
        help="share of opioid overdoses in the measured ED feed (0.005: one message in 200)",
    )
    p.add_argument("--connections", type=int, default=8, help="concurrent MLLP connections")
    p.add_argument("--window", type=int, default=1, help="messages in flight per connection")
    p.add_argument("--ems-reports", type=int, default=6_000, help="measured EMS run reports")
    p.add_argument("--ems-concurrency", type=int, default=24, help="concurrent HTTP requests")
    p.add_argument(
        "--ems-batch",
        type=int,
        default=1,
        help='reports per request (> 1 posts {"reports": [...]}); default one per request',
    )
    p.add_argument("--hl7apy-sample", type=int, default=300, help="messages parsed by hl7apy")
    p.add_argument("--baseline-cap", type=float, default=10.0, help="seconds per baseline")
    p.add_argument("--no-ems", action="store_true", help="skip the EMS phase")
    p.add_argument("--sqlite", action="store_true", help="intake on SQLite instead of DATABASE_URL")
    p.add_argument(
        "--profile",
        type=Path,
        nargs="?",
        const=Path(tempfile.gettempdir()) / "portline-bench-intake.prof",
        metavar="FILE",
        help="cProfile the service during the measured MLLP phase and print the top entries "
        "(rates drop); the stats are kept in FILE (default %(const)s)",
    )
    p.add_argument(
        "--count-sql",
        action="store_true",
        help="count the service's SQL statements and commits in the measured MLLP phase",
    )
    p.add_argument(
        "--experiment",
        action="append",
        default=[],
        choices=sorted(EXPERIMENTS),
        help="what-if change applied to the service process only (see tests/bench/"
        "serve_intake.py); repeatable. async-commit is NOT durable",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("PORTLINE_INTAKE_WORKERS") or os.cpu_count() or 1),
        help="intake worker processes (PORTLINE_INTAKE_WORKERS); default: "
        "$PORTLINE_INTAKE_WORKERS, else one per CPU, as docs/intake.md advises. "
        "Always 1 with --sqlite, --profile, --count-sql and --experiment",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="MLLP over mutual TLS (certificates made for the run; the demo hospital is then "
        "recognised by its client certificate and its loopback network)",
    )
    p.add_argument("--var-dir", type=Path, help="default: $PORTLINE_VAR_DIR or a temp dir")
    args = p.parse_args(argv)
    if args.messages < 1 or args.connections < 1 or args.window < 1 or args.workers < 1:
        p.error("--messages, --connections, --window and --workers must be positive")
    if args.sqlite or args.profile or args.count_sql or args.experiment:
        args.workers = 1  # SQLite runs one process; the instruments live in one process
    return args


def environment(args: argparse.Namespace, var_dir: Path) -> tuple[dict[str, str], str]:
    env = {**os.environ, "PORTLINE_ENV": "development", "PORTLINE_VAR_DIR": str(var_dir)}
    env.setdefault("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    env.pop("PORTLINE_DB_SCHEMA_PREFIX", None)  # intake's schema is plain `intake` here
    if args.sqlite:
        (var_dir / "sqlite").mkdir(parents=True, exist_ok=True)
        env["DATABASE_URL"] = f"sqlite+aiosqlite:///{var_dir}/sqlite/{{service}}.db"
        return env, "SQLite (WAL, synchronous=NORMAL)"
    if not env.get("DATABASE_URL", "").startswith("postgres"):
        raise BenchError(
            "set DATABASE_URL to a PostgreSQL URL (scripts/bench.sh does), or --sqlite"
        )
    return env, "PostgreSQL"


async def run(args: argparse.Namespace, var_dir: Path) -> int:
    env, backend = environment(args, var_dir)
    if args.sqlite or not (var_dir / "demo-keys.json").exists():
        try:
            keys = await prepare(env)
        except RuntimeError as exc:
            raise BenchError(str(exc)) from None
    else:
        keys = demo_keys(var_dir)
    report = Report()

    warm_cases = hl7_messages(args.warmup, prefix="W", seed=SEED)
    cases = hl7_messages(args.messages, prefix="M", seed=SEED, overdose_share=args.overdose_share)
    ems_warm = ems_reports(0 if args.no_ems else 200, prefix="EW", seed=SEED)
    ems_cases = ems_reports(0 if args.no_ems else args.ems_reports, prefix="EM", seed=SEED)
    check_feed([*warm_cases, *cases], [*ems_warm, *ems_cases])
    hl7_overdoses = sum(c.overdose for c in (*warm_cases, *cases))
    ems_overdoses = sum(c.overdose for c in (*ems_warm, *ems_cases))

    print(f"baselines: parsing the same messages in-process (up to {args.baseline_cap:.0f} s each)")
    rates = baselines(cases, hl7apy_sample=args.hl7apy_sample, cap=args.baseline_cap)
    hl7apy_rate, pyhl7_rate, screen_rate = (r.per_second for r in rates)

    wrapper = bool(args.profile or args.count_sql or args.experiment)
    phase_dir = var_dir / "phase"
    phase_dir.mkdir(exist_ok=True)
    server_env = {
        **env,
        "BENCH_PHASE_OUT": str(phase_dir),
        "BENCH_PROFILE": "1" if args.profile else "",
        "BENCH_COUNT_SQL": "1" if args.count_sql else "",
        "BENCH_EXPERIMENTS": ",".join(args.experiment),
        "PORTLINE_INTAKE_WORKERS": str(args.workers),
    }
    tls = mutual_tls(env, server_env, var_dir) if args.tls else None
    print("starting intake ...")
    server = start_server(server_env, var_dir, wrapper=wrapper)
    print(
        f"intake pid {server.proc.pid} ({args.workers} worker process"
        f"{'es' if args.workers > 1 else ''}), MLLP port {server.mllp_port}, {server.base_url}"
    )
    engine = create_engine(env["DATABASE_URL"], service="intake")
    try:
        conn_timeout = max(120.0, (args.messages + args.warmup) / 50)
        print(f"MLLP warm-up: {len(warm_cases)} messages")
        warm = await drive_mllp(
            server.mllp_port,
            warm_cases,
            connections=args.connections,
            window=args.window,
            timeout=conn_timeout,
            tls=tls,
        )
        batches_before = scrape_batches(server.base_url)
        samples: dict[str, CpuSample] = {}

        def phase_start() -> None:
            if wrapper:
                server.proc.send_signal(signal.SIGUSR1)
            samples["start"] = CpuSample.take()

        def phase_end() -> None:
            samples["end"] = CpuSample.take()
            if wrapper:
                server.proc.send_signal(signal.SIGUSR2)

        print(
            f"MLLP measured: {len(cases)} messages over {args.connections} connections, "
            f"window {args.window}"
        )
        mllp = await drive_mllp(
            server.mllp_port,
            cases,
            connections=args.connections,
            window=args.window,
            timeout=conn_timeout,
            on_start=phase_start,
            on_end=phase_end,
            tls=tls,
        )
        batches_after = scrape_batches(server.base_url)
        report.problems += warm.errors + mllp.errors

        # -- nothing lost: ACKs, inbound rows, overdose events ----------------------------
        all_cases = [*warm_cases, *cases]
        acked = warm.acked | mllp.acked
        not_aa = len(all_cases) - len(acked)
        rows = await count_keys(engine, [dedupe_key(c.message) for c in all_cases])
        mllp_rows = await scalar(
            engine, "select count(*) from inbound_message where channel = 'mllp'"
        )
        mllp_statuses = await statuses(engine, "mllp")
        od_events = await scalar(
            engine, "select count(*) from outbox where topic = :t", t=INTAKE_OVERDOSES.name
        )
        lost = max(0, len(all_cases) - rows) + max(0, hl7_overdoses - od_events)
        if not_aa:
            report.problems.append(f"MLLP: {not_aa} messages without an AA ({mllp.codes})")
        if mllp.mismatched + warm.mismatched:
            report.problems.append(
                f"MLLP: {mllp.mismatched + warm.mismatched} ACKs for another control id"
            )
        if rows != len(all_cases) or mllp_rows != len(all_cases):
            report.problems.append(
                f"MLLP: {rows} inbound rows for our control ids, {mllp_rows} mllp rows; "
                f"expected {len(all_cases)}"
            )
        if mllp_statuses.get("accepted", 0) != hl7_overdoses:
            report.problems.append(f"MLLP: inbound statuses {mllp_statuses}")
        if od_events != hl7_overdoses:
            report.problems.append(
                f"MLLP: {od_events} OverdoseReported in the outbox, expected {hl7_overdoses}"
            )

        # -- EMS -----------------------------------------------------------------------
        ems: EmsResult | None = None
        ems_samples: tuple[CpuSample, CpuSample] | None = None
        if not args.no_ems:
            print(f"EMS warm-up: {len(ems_warm)} reports")
            ems_warm_result = await drive_ems(
                server.base_url,
                keys["demo-ems"],
                ems_warm,
                concurrency=args.ems_concurrency,
                timeout=120,
                per_request=args.ems_batch,
            )
            report.problems += ems_warm_result.errors
            report.problems += check_ems_responses(ems_warm_result, ems_warm)
            print(
                f"EMS measured: {len(ems_cases)} reports, "
                f"{args.ems_concurrency} concurrent requests"
            )
            before = CpuSample.take()
            ems = await drive_ems(
                server.base_url,
                keys["demo-ems"],
                ems_cases,
                concurrency=args.ems_concurrency,
                timeout=max(120.0, len(ems_cases) / 20),
                per_request=args.ems_batch,
            )
            ems_samples = (before, CpuSample.take())
            report.problems += ems.errors
            report.problems += check_ems_responses(ems, ems_cases)
        ems_total = len(ems_warm) + len(ems_cases)
        ems_rows = await scalar(
            engine, "select count(*) from inbound_message where channel = 'http_ems'"
        )
        ems_reports_stored = await scalar(
            engine, "select count(*) from report where source_kind = 'ems'"
        )
        if ems_rows != ems_total or ems_reports_stored != ems_overdoses:
            report.problems.append(
                f"EMS: {ems_rows} inbound rows (expected {ems_total}), {ems_reports_stored} "
                f"reports (expected {ems_overdoses})"
            )
        ems_lost = max(0, ems_total - ems_rows)

        print("waiting for the outbox relay to publish every event ...")
        unpublished, waited = await wait_published(engine, timeout=90)
        total_events = await scalar(
            engine, "select count(*) from outbox where topic = :t", t=INTAKE_OVERDOSES.name
        )
        rejected_events = await scalar(
            engine, "select count(*) from outbox where topic = :t", t=INTAKE_REJECTED.name
        )
        if total_events != hl7_overdoses + ems_overdoses:
            report.problems.append(
                f"{total_events} OverdoseReported in total, expected "
                f"{hl7_overdoses + ems_overdoses}"
            )
        if unpublished:
            report.problems.append(f"{unpublished} outbox rows still unpublished after {waited}s")
        if rejected_events:
            report.problems.append(f"{rejected_events} InboundRejected events (expected none)")
    finally:
        await engine.dispose()
        rc = stop_server(server)
        if rc not in (0, -signal.SIGINT):
            report.problems.append(f"intake exited with {rc} on SIGINT:\n{server.log_tail()}")

    # -- the table ---------------------------------------------------------------------
    e2e = len(cases) / mllp.seconds if mllp.seconds else 0.0
    lat = sorted(mllp.latencies)
    cpu = cpu_share(samples["start"], samples["end"], server.proc.pid) if "end" in samples else {}
    batch_count = batches_after[1] - batches_before[1]
    mean_batch = (batches_after[0] - batches_before[0]) / batch_count if batch_count else 0.0
    od_share = sum(c.overdose for c in cases) / len(cases) * 100
    lines = report.lines
    lines.append("=" * 78)
    lines.append(
        f"PORTline intake benchmark: {backend}, {os.cpu_count()} CPUs, intake with "
        f"{args.workers} worker process{'es' if args.workers > 1 else ''}"
        + (f", EXPERIMENT {'+'.join(args.experiment)}" if args.experiment else "")
        + (" (cProfile on: rates not representative)" if args.profile else "")
    )
    lines.append(
        f"feed: {len(cases):,} ADT A01/A03/A04/A08 messages, {sum(c.overdose for c in cases)} "
        f"overdoses ({od_share:.2f} %), + {len(warm_cases)} warm-up; "
        f"{args.connections} MLLP connections, window {args.window}"
        + (", mutual TLS (client certificate and loopback network)" if args.tls else "")
    )
    report.head("parse-only baselines (this process, one core, same messages)")
    for r in rates:
        report.row(r.name, f"{fmt_rate(r.per_second):>9} msg/s   ({r.messages:,} messages)")
    report.head("MLLP end to end (ACK only after the transaction committed)")
    report.row("messages/s (durable ACK)", f"{fmt_rate(e2e):>9} msg/s   ({mllp.seconds:.2f} s)")
    report.row(
        "ACK latency p50 / p99 / max",
        f"{percentile(lat, 0.5) * 1000:.2f} / {percentile(lat, 0.99) * 1000:.2f} / "
        f"{(lat[-1] if lat else float('nan')) * 1000:.1f} ms",
    )
    if lat and args.window <= 1:
        total = sum(lat)
        slow_share = sum(x for x in lat if x > SLOW_ACK) / total if total else 0.0
        grouped = stalls(mllp.slow)
        whole = [g for g in grouped if g[0] >= args.connections]
        report.row(
            f"ACKs over {SLOW_ACK * 1000:.0f} ms: count, share of all waiting",
            f"{len(mllp.slow):,}, {slow_share * 100:.1f} %",
        )
        report.row(
            "pauses of every connection (with an overdose)",
            f"{len(whole)} ({sum(1 for g in whole if g[1])}); "
            f"{sum(c.overdose for c in cases)} overdoses in the feed",
        )
    report.row(
        "ACKs AA / AE / AR",
        f"{mllp.codes.get('AA', 0):,} / {mllp.codes.get('AE', 0)} / {mllp.codes.get('AR', 0)}",
    )
    report.row(
        "inbound_message rows (ours / expected)", f"{rows:,} / {len(all_cases):,} (incl. warm-up)"
    )
    report.row(
        "OverdoseReported in outbox (expected)", f"{od_events} ({hl7_overdoses}, incl. warm-up)"
    )
    report.row("lost", str(lost))
    report.row("group commit: messages per batch", f"{mean_batch:.2f} (mean, all workers)")
    if cpu:
        report.row("CPU, % of one core", cpu_line(cpu))
        # CPU time per message: what a busy machine distorts least (the rate waits for cores)
        phase = samples["end"].at - samples["start"].at
        per_message = {k: cpu[k] / 100 * phase / len(cases) * 1e6 for k in ("intake", "postgres")}
        report.row(
            "CPU per message (user + system)",
            f"intake {per_message['intake']:.0f} µs, postgres {per_message['postgres']:.0f} µs",
        )
    other_load = cpu.get("other processes", 0.0)
    report.head("ratios (same run)")
    report.row("end to end / python-hl7 parse", f"{e2e / pyhl7_rate:.2f}x")
    report.row("end to end / hl7apy parse", f"{e2e / hl7apy_rate:.1f}x")
    report.row("screen + classify / python-hl7 parse", f"{screen_rate / pyhl7_rate:.1f}x")
    ems_rate = 0.0
    if ems is not None:
        ems_rate = len(ems_cases) / ems.seconds if ems.seconds else 0.0
        elat = sorted(ems.latencies)
        report.head(
            "EMS JSON run reports over HTTP/1.1 ("
            + ("one report" if args.ems_batch <= 1 else f"{args.ems_batch} reports")
            + " per request, durable)"
        )
        report.row(
            "reports/s",
            f"{fmt_rate(ems_rate):>9} /s      ({len(ems_cases):,} in {ems.seconds:.2f} s)",
        )
        report.row(
            "latency p50 / p99 / max",
            f"{percentile(elat, 0.5) * 1000:.2f} / {percentile(elat, 0.99) * 1000:.2f} / "
            f"{(elat[-1] if elat else float('nan')) * 1000:.1f} ms",
        )
        ok = sum(1 for s, _ in ems.responses if s == 200)
        report.row(
            "HTTP 200 / requests",
            f"{ok:,} / {len(ems.responses):,} ({args.ems_concurrency} concurrent)",
        )
        report.row(
            "inbound rows / overdose reports",
            f"{ems_rows:,} / {ems_reports_stored} (incl. warm-up)",
        )
        report.row("lost", str(ems_lost))
        if ems_samples:
            ecpu = cpu_share(*ems_samples, server.proc.pid)
            report.row("CPU, % of one core", cpu_line(ecpu))
            other_load = max(other_load, ecpu["other processes"])
    report.head("delivery")
    report.row(
        "OverdoseReported published to Kafka",
        f"{total_events - unpublished} of {total_events}, {waited:.1f} s after the last request",
    )
    if other_load > OTHER_LOAD_WARNING:
        lines.append("")
        lines.append(
            f"WARNING: unrelated processes used up to {other_load:.0f} % of a core during a "
            "measured phase; the rates above are depressed by that load."
        )
    report.head("targets")
    report.row(
        f"MLLP target >= {TARGET_MLLP:,.0f} msg/s", f"{'PASS' if e2e >= TARGET_MLLP else 'FAIL'}"
    )
    report.row("MLLP faster than python-hl7 parse", f"{'PASS' if e2e > pyhl7_rate else 'FAIL'}")
    if ems is not None:
        report.row(
            f"EMS target >= {TARGET_EMS:,.0f} reports/s",
            f"{'PASS' if ems_rate >= TARGET_EMS else 'FAIL'}",
        )
    report.row(
        "nothing lost, every message AA, no errors",
        "PASS" if not report.problems and lost == 0 and ems_lost == 0 else "FAIL",
    )
    lines.append("=" * 78)
    print("\n".join(lines))
    if args.count_sql:
        print_sql_counts(phase_dir / "sql-counts.json", len(cases), batch_count)
    if args.profile:
        shutil.copyfile(phase_dir / "intake.prof", args.profile)
        print_profile(args.profile)
    for problem in report.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if report.problems or lost or ems_lost else 0


def print_sql_counts(path: Path, messages: int, batches: float) -> None:
    if not path.exists():
        print(f"(no SQL counts written to {path})")
        return
    counts: dict[str, int] = json.loads(path.read_text())
    print(
        f"\n-- intake SQL in the measured phase ({messages:,} messages, {batches:,.0f} "
        "HL7 transactions); BEGIN and pool pre-ping round trips come on top"
    )
    for shape, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {n:>8,}  {n / messages:6.3f}/msg  {shape}")


def print_profile(path: Path, top: int = 30) -> None:
    if not path.exists():
        print(f"(no profile written to {path})")
        return
    for key in ("tottime", "cumulative"):
        print(f"\n-- intake profile, top {top} by {key} ({path})")
        pstats.Stats(str(path)).sort_stats(key).print_stats(top)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.var_dir:
            var_dir: Path = args.var_dir
        elif os.environ.get("PORTLINE_VAR_DIR"):
            var_dir = Path(os.environ["PORTLINE_VAR_DIR"])
        else:
            var_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pl-bench-")))
        var_dir.mkdir(parents=True, exist_ok=True)
        runner: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
        try:
            return runner(run(args, var_dir))
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        except subprocess.CalledProcessError as exc:
            print(f"bench: {exc}\n{(exc.stderr or b'').decode(errors='replace')}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
