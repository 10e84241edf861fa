"""CPU per MLLP message in intake's own Python, without the database: where the time goes.

    python -m tests.bench.hl7_cpu [--messages 20000] [--rounds 5] [--profile FILE]

`make bench` measures intake end to end, with PostgreSQL, Kafka and the network beside it; on
a shared machine its rates move with everyone else's load. This drives the same per-frame
path in one process: the MLLP decoder, the listener's answer (trace span, authentication),
`prepare` (split, screen, partner, dedupe key, classify), the group-commit batcher and
`commit`, the ACK, the framing of the reply. Only the store is replaced, by one in memory
(the partner directory reads SQLite once, then its cache answers), and the overdoses' hl7apy
parse runs in a parse worker process as in the service, so its CPU is not counted here.

It reports the process's CPU time per message (user + system, so other processes' load hardly
shows), the best and median of several rounds, and with `--profile` a cProfile of one more
round (by CPU time, not wall time).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from services.intake.batching import MicroBatcher
from services.intake.mllp import MllpDecoder, frame
from services.intake.mllp_listener import MllpListener, MllpPeer
from services.intake.models import Channel
from services.intake.parse_pool import ParsePool
from services.intake.partners import PartnerDirectory
from services.intake.pipeline import HL7Intake, HL7Submission
from services.intake.pipeline.hl7 import PreparedSubmission
from services.intake.reports import Protector
from services.intake.seed import seed_demo
from services.intake.store import BatchWrites, Known, RoutineResult, RoutineWrites
from shared.clock import ManualClock
from shared.db import create_engine, session_factory
from shared.migrations import upgrade
from shared.sealing import BlindIndexer, Keyring, Sealer
from tests.bench.messages import hl7_messages

SEED = 20261120
CONNECTIONS = 8


class _MemoryStore:
    """The store port in memory: first copy wins, nothing is durable."""

    def __init__(self) -> None:
        self.acks: dict[str, str] = {}
        self.outbox = 0

    async def lookup(self, *, dedupe_keys: Sequence[str], source_keys: Sequence[str]) -> Known:
        return Known(acks={k: self.acks[k] for k in dedupe_keys if k in self.acks})

    async def write(self, writes: BatchWrites) -> None:
        for row in writes.inbound:
            if row.dedupe_key is not None:
                self.acks.setdefault(row.dedupe_key, row.ack or "")
        self.outbox += len(writes.outbox)

    async def write_routine(self, writes: RoutineWrites) -> RoutineResult:
        inserted = set()
        acks: dict[str, str] = {}
        for row in writes.rows:
            assert row.dedupe_key is not None
            if row.dedupe_key not in self.acks:
                self.acks[row.dedupe_key] = row.ack or ""
                inserted.add(row.dedupe_key)
            acks[row.dedupe_key] = self.acks[row.dedupe_key]
        return RoutineResult(inserted=frozenset(inserted), acks=acks, reports={})

    async def close(self) -> None:
        return None


async def _round(frames: Sequence[bytes], tmp: Path, profile: cProfile.Profile | None) -> float:
    clock = ManualClock(datetime.now(UTC))
    engine = create_engine(f"sqlite+aiosqlite:///{tmp}/intake.db", service="intake")
    await upgrade(engine, service="intake")
    sessions = session_factory(engine)
    await seed_demo(sessions, clock=clock, var_dir=tmp)
    directory = PartnerDirectory(sessions, ttl_seconds=3600)
    protector = Protector(Sealer(Keyring({"t1": b"k" * 32}, "t1")), BlindIndexer(b"b" * 32))
    pool = ParsePool(1)  # as the service: the overdoses' hl7apy parse in its own process
    await pool.warm_up()
    hl7 = HL7Intake(
        store=_MemoryStore(),
        directory=directory,
        protector=protector,
        clock=clock,
        full_parse=pool,
    )

    async def batch(items: Sequence[PreparedSubmission], reply: object) -> list[str]:
        return await hl7.commit(items, reply=reply)  # type: ignore[arg-type]

    batcher: MicroBatcher[PreparedSubmission, str] = MicroBatcher(batch, max_concurrent=2)
    batcher.start()

    async def on_frame(payload: bytes, partners: frozenset[str]) -> str:
        prepared = await hl7.prepare(HL7Submission(payload, Channel.MLLP, partners))
        answer = hl7.answered(prepared)
        return answer if answer is not None else await batcher.submit(prepared)

    async def authenticate(peer: MllpPeer) -> frozenset[str]:
        return (await directory.mllp_rules()).partners_for(peer.address, peer.fingerprint)

    listener = MllpListener(
        on_frame, authenticate=authenticate, host="127.0.0.1", port=0, now=clock.now
    )
    peer = MllpPeer("127.0.0.1", None)

    async def connection(mine: Sequence[bytes]) -> None:
        decoder = MllpDecoder()
        for data in mine:
            for payload in decoder.feed(data):
                assert isinstance(payload, bytes)
                ack = await listener._answer(payload, peer)
                frame(ack.encode())
                assert "|AA|" in ack, ack

    # warm the caches (rules, facility) as the service's warm-up does
    await connection(frames[:1])
    work = [frames[1 + i :: CONNECTIONS] for i in range(CONNECTIONS)]
    if profile is not None:
        profile.enable()
    started = time.process_time()
    await asyncio.gather(*(connection(w) for w in work))
    spent = time.process_time() - started
    if profile is not None:
        profile.disable()
    await batcher.stop()
    pool.close()
    await engine.dispose()
    return spent / (len(frames) - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", type=Path, help="cProfile (CPU time) one more round into FILE")
    args = p.parse_args()
    cases = hl7_messages(args.messages + 1, prefix="C", seed=SEED)
    frames = [c.frame for c in cases]
    results = []
    for n in range(args.rounds + (1 if args.profile else 0)):
        profile = cProfile.Profile(time.process_time) if n == args.rounds else None
        with tempfile.TemporaryDirectory() as tmp:
            per = asyncio.run(_round(frames, Path(tmp), profile))
        if profile is None:
            results.append(per)
        note = " (profiled)" if profile is not None else ""
        print(f"round {n + 1}: {per * 1e6:.1f} µs CPU per message{note}")
        if profile is not None and args.profile:
            profile.dump_stats(args.profile)
            pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(35)
    if results:
        print(
            f"best {min(results) * 1e6:.1f} µs, median "
            f"{sorted(results)[len(results) // 2] * 1e6:.1f} µs CPU per message "
            f"({args.messages:,} messages, {len(results)} rounds)"
        )


if __name__ == "__main__":
    main()
