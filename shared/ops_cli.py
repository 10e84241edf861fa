"""The day-2 commands of `portline`: dead letters, sealing-key rotation and re-sealing,
retention, and Kafka's side of a backup and restore (docs/deploy.md is their runbook).

    portline dlq list | show ID | replay ID... | replay --all | resolve ID
    portline keys rotate | reseal | status | reindex | retire-index VERSION
    portline prune [--dry-run] [--audit-log]
    portline consumers position | restore --position FILE

A dead letter's ID is `SERVICE:NUMBER`, as `portline dlq list` prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from shared.kafka import KafkaConnection
from shared.settings import SERVICES, ServiceName, Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.runtime import ConsumerSpec, Runtime
    from shared.sealing import BlindIndexer, Sealer

__all__ = ["register", "register_keys"]

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def _chosen(service: str | None) -> tuple[ServiceName, ...]:
    return tuple(s for s in SERVICES if service in (None, s))


def _table(rows: Sequence[Sequence[str]]) -> None:
    """Print rows as aligned columns (the last one unpadded)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for *cells, last in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(cells, widths, strict=True)), last]))


async def _with_service(
    settings: Settings, service: ServiceName, work: Callable[[Runtime], Awaitable[T]]
) -> T:
    """Run `work` with an unstarted runtime of the service: its database, its consumers' inbox
    processors; no Kafka connection, no relay, no consumers running."""
    from shared.runtime import Runtime

    runtime = Runtime(service, settings)
    try:
        return await work(runtime)
    finally:
        await runtime.engine.dispose()


async def _sessions_of(
    settings: Settings,
    service: ServiceName,
    work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]],
    *,
    as_owner: bool = False,
) -> T:
    from shared.cli import _on_database

    return await _on_database(settings, service, work, as_owner=as_owner)


def _problem(command: str, service: str, exc: Exception) -> None:
    from shared.cli import _NoDatabase

    if isinstance(exc, _NoDatabase):
        why = f"no database at {exc} (run `portline migrate`)"
    else:  # the error's type only: its text could quote rows
        why = f"cannot use its database ({type(exc).__name__}; run `portline migrate`?)"
    print(f"portline {command}: {service}: {why}", file=sys.stderr)


# --- dead letters --------------------------------------------------------------------------------


def _parse_id(text: str) -> tuple[ServiceName, int]:
    name, sep, number = text.partition(":")
    service = next((s for s in SERVICES if s == name), None)
    if not sep or service is None or not number.isdigit():
        raise SystemExit(
            f"portline dlq: {text!r} is not a dead letter id (SERVICE:NUMBER, as "
            "`portline dlq list` prints it)"
        )
    return service, int(number)


def _cmd_dlq_list(args: argparse.Namespace) -> int:
    from shared.dead_letters import DeadLetterEntry, list_dead_letters

    settings = get_settings()

    async def go() -> tuple[list[tuple[str, DeadLetterEntry]], int]:
        found: list[tuple[str, DeadLetterEntry]] = []
        failed = 0
        for service in _chosen(args.service):

            async def work(sessions: async_sessionmaker[AsyncSession]) -> list[DeadLetterEntry]:
                return await list_dead_letters(sessions, include_resolved=args.all)

            try:
                found.extend((service, e) for e in await _sessions_of(settings, service, work))
            except Exception as exc:
                _problem("dlq list", service, exc)
                failed += 1
        return found, failed

    found, failed = asyncio.run(go())
    if not found:
        print("no dead letters" if not args.all else "no dead letters, resolved or not")
        return 1 if failed else 0
    rows = [("ID", "CONSUMER", "EVENT", "ATTEMPTS", "DEAD-LETTERED AT", "STATE", "REASON")]
    for service, e in found:
        reason = e.error.splitlines()[0] if e.error else ""
        rows.append(
            (
                f"{service}:{e.id}",
                e.consumer,
                e.event_type,
                str(e.attempts),
                e.created_at.isoformat(timespec="seconds"),
                "resolved" if e.resolved_at else "open",
                reason[:80] + ("…" if len(reason) > 80 else ""),
            )
        )
    _table(rows)
    return 1 if failed else 0


def _cmd_dlq_show(args: argparse.Namespace) -> int:
    from shared.dead_letters import DeadLetterEntry, describe_payload, get_dead_letter

    settings = get_settings()
    service, number = _parse_id(args.id)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> DeadLetterEntry | None:
        return await get_dead_letter(sessions, number)

    try:
        entry = asyncio.run(_sessions_of(settings, service, work))
    except Exception as exc:
        _problem("dlq show", service, exc)
        return 1
    if entry is None:
        print(f"portline dlq show: {service} has no dead letter {number}", file=sys.stderr)
        return 1
    resolved = entry.resolved_at.isoformat(timespec="seconds") if entry.resolved_at else "no"
    for label, value in (
        ("id", f"{service}:{entry.id}"),
        ("consumer", entry.consumer),
        ("message", f"{entry.topic} partition {entry.partition} offset {entry.offset}"),
        ("event id", entry.event_id or "(none)"),
        ("attempts", str(entry.attempts)),
        ("dead-lettered at", entry.created_at.isoformat(timespec="seconds")),
        ("resolved", resolved),
        ("reason", entry.error),
    ):
        print(f"{label + ':':<18}{value}")
    # Sealed fields stay sealed tokens: nothing here opens them.
    print("event (sealed fields stay sealed):")
    print(json.dumps(describe_payload(entry.payload), indent=2, sort_keys=True))
    return 0


def _cmd_dlq_replay(args: argparse.Namespace) -> int:
    from shared.dead_letters import (
        DeadLetterEntry,
        ReplayResult,
        get_dead_letter,
        list_dead_letters,
        replay_dead_letter,
    )

    settings = get_settings()
    if args.all == bool(args.ids):
        print("portline dlq replay: name dead letter ids, or --all", file=sys.stderr)
        return 2
    wanted: dict[ServiceName, list[int]] = {}
    for text in args.ids:
        service, number = _parse_id(text)
        wanted.setdefault(service, []).append(number)
    services = _chosen(args.service) if args.all else tuple(s for s in SERVICES if s in wanted)

    async def one_service(runtime: Runtime) -> list[ReplayResult | str]:
        from shared.runtime import consumer_specs

        service = runtime.service
        entries: list[DeadLetterEntry | None]
        if args.all:
            entries = list(await list_dead_letters(runtime.sessions))
        else:
            entries = []
            for number in wanted[service]:
                entry = await get_dead_letter(runtime.sessions, number)
                if entry is None or entry.resolved_at is not None:
                    entries.append(None)
                    continue
                entries.append(entry)
        specs: dict[str, ConsumerSpec] = {
            f"{service}.{s.name}": s for s in consumer_specs(service, settings, runtime)
        }
        results: list[ReplayResult | str] = []
        for position, entry in enumerate(entries):
            if entry is None:
                number = wanted[service][position]
                results.append(f"{service}:{number} has no open dead letter")
                continue
            spec = specs.get(entry.consumer)
            if spec is None:
                results.append(f"{service}:{entry.id}: no consumer {entry.consumer} runs now")
                continue
            results.append(
                await replay_dead_letter(
                    runtime.sessions, runtime.processor(spec), entry, now=_now()
                )
            )
        return results

    status = 0
    for service in services:
        try:
            results = asyncio.run(_with_service(settings, service, one_service))
        except Exception as exc:
            _problem("dlq replay", service, exc)
            status = 1
            continue
        for result in results:
            if isinstance(result, str):
                print(f"{result}", file=sys.stderr)
                status = 1
                continue
            entry: DeadLetterEntry = result.entry
            label = f"{service}:{entry.id}"
            if result.outcome is None:
                print(f"{label} failed again, still open: {result.error}")
                status = 1
            elif result.outcome.value == "duplicate":
                print(f"{label} was already applied; marked resolved")
            else:
                print(f"{label} applied; marked resolved")
    if args.all and status == 0:
        print("every open dead letter replayed")
    return status


def _cmd_dlq_resolve(args: argparse.Namespace) -> int:
    from shared.dead_letters import resolve_dead_letter

    settings = get_settings()
    service, number = _parse_id(args.id)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> bool:
        return await resolve_dead_letter(sessions, number, now=_now())

    try:
        done = asyncio.run(_sessions_of(settings, service, work))
    except Exception as exc:
        _problem("dlq resolve", service, exc)
        return 1
    if not done:
        print(f"portline dlq resolve: {service} has no open dead letter {number}", file=sys.stderr)
        return 1
    print(f"{service}:{number} resolved without replay: its event will not be applied")
    return 0


# --- sealing keys --------------------------------------------------------------------------------


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    from shared.sealing import KeyConfigError, rotate_development_keys, rotated_setting

    settings = get_settings()
    try:
        if settings.seal_keys is None and settings.is_development:
            kid = rotate_development_keys(settings.var_dir, args.kid)
            print(
                f"development keys ({settings.var_dir}/keys.json) now seal with {kid}; the "
                "older keys still open. Restart the services, then run `portline keys reseal`."
            )
            return 0
        if settings.seal_keys is None:
            print("portline keys rotate: PORTLINE_SEAL_KEYS is not set", file=sys.stderr)
            return 2
        kid, value = rotated_setting(settings.seal_keys.get_secret_value(), args.kid)
    except KeyConfigError as exc:
        print(f"portline keys rotate: {exc}", file=sys.stderr)
        return 2
    print(f"PORTLINE_SEAL_KEYS={value}")
    print(
        f"A new key {kid} is first: put this value in the services' secret (docs/deploy.md"
        "#rotating-the-sealing-key), restart every service, then run `portline keys reseal`. "
        "Keep the old keys until `portline keys status` shows none of their tokens left.",
        file=sys.stderr,
    )
    return 0


def _keys(settings: Settings, command: str) -> tuple[Sealer, BlindIndexer] | None:
    """The sealing and blind-index keys, or None (said on stderr) when they are misconfigured."""
    from shared.sealing import KeyConfigError, load_keys

    try:
        return load_keys(settings)
    except KeyConfigError as exc:
        print(f"portline keys {command}: {exc}", file=sys.stderr)
        return None


def _cmd_keys_reseal(args: argparse.Namespace) -> int:
    from shared.reseal import Progress, ResealReport, columns_for, reseal_column

    settings = get_settings()
    keys = _keys(settings, "reseal")
    if keys is None:
        return 2
    sealer, _indexer = keys

    def write(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    progress = Progress(write, bar=sys.stderr.isatty())
    print(
        f"re-sealing under {sealer.keyring.active_kid}, at most {args.rate:g} rows a second "
        "(safe to stop and run again)",
        file=sys.stderr,
    )
    status = 0
    for service in _chosen(args.service):

        async def work(
            sessions: async_sessionmaker[AsyncSession], service: ServiceName = service
        ) -> list[ResealReport]:
            return [
                await reseal_column(
                    sessions,
                    column,
                    sealer,
                    rate=args.rate,
                    batch=args.batch,
                    progress=progress,
                    label=f"{service} {column.name}",
                )
                for column in columns_for(service)
            ]

        try:
            # As the owner: the audit logs' append-only triggers are lifted per batch.
            reports = asyncio.run(_sessions_of(settings, service, work, as_owner=True))
        except Exception as exc:
            _problem("keys reseal", service, exc)
            status = 1
            continue
        for report in reports:
            line = f"{report.column}: {report.resealed} re-sealed"
            if report.skipped:
                line += f", {report.skipped} changed meanwhile (already under the new key)"
            if report.failed:
                line += f", {report.failed} could not be opened with the keys given"
                status = 1
            print(line)
    return status


def _cmd_keys_status(args: argparse.Namespace) -> int:
    from collections import Counter

    from shared.reseal import columns_for, key_usage

    settings = get_settings()
    keys = _keys(settings, "status")
    if keys is None:
        return 2
    sealer, indexer = keys
    totals: Counter[str] = Counter()
    rows = [("SERVICE", "COLUMN", "KEY", "TOKENS")]
    status = 0
    for service in _chosen(args.service):

        async def work(
            sessions: async_sessionmaker[AsyncSession], service: ServiceName = service
        ) -> dict[str, Counter[str]]:
            return await key_usage(sessions, columns_for(service))

        try:
            usage = asyncio.run(_sessions_of(settings, service, work))
        except Exception as exc:
            _problem("keys status", service, exc)
            status = 1
            continue
        for column, counts in usage.items():
            for kid, n in sorted(counts.items()):
                rows.append((service, column, kid, str(n)))
                totals[kid] += n
    if len(rows) > 1:
        _table(rows)
    active = sealer.keyring.active_kid
    print(f"active key: {active}")
    for kid in sealer.keyring.kids:
        if kid == active:
            continue
        left = totals.get(kid, 0)
        if left:
            print(f"{kid}: {left} token(s) left: run `portline keys reseal`")
        else:
            print(
                f"{kid}: no token left in the database; remove it once the topics' retention "
                "has passed since the reseal and no backup you may restore needs it"
            )
    unknown = sorted(set(totals) - set(sealer.keyring.kids))
    if unknown:
        print(f"tokens under keys not configured here: {', '.join(unknown)}")
        status = 1
    if "scheduler" in _chosen(args.service):
        status = max(status, _blind_index_status(settings, indexer))
    if "outreach" in _chosen(args.service):
        status = max(status, _opt_out_status(settings, indexer))
    return status


# --- blind-index keys ----------------------------------------------------------------------------


def _blind_index_status(settings: Settings, indexer: BlindIndexer) -> int:
    """How far each blind-index key version has got in the scheduler's person keys."""
    from services.scheduler.reindex import usage

    try:
        found = asyncio.run(_sessions_of(settings, "scheduler", usage))
    except Exception as exc:
        _problem("keys status", "scheduler", exc)
        return 1
    everyone = found.total
    print(f"active blind index version: {indexer.version}")
    for version in sorted(set(found.people) | set(indexer.versions)):
        people = found.people.get(version, 0)
        state = (
            "active"
            if version == indexer.version
            else ("held" if version in indexer.versions else "not configured here")
        )
        share = f" ({people / everyone:.0%} of people with keys)" if everyone else ""
        line = f"blind index {version} ({state}): {people} people{share}"
        if found.only.get(version):
            line += f", {found.only[version]} under {version} only"
        print(line)
    behind = sum(n for v, n in found.only.items() if v != indexer.version)
    if behind:
        print(f"{behind} people not indexed under {indexer.version}: run `portline keys reindex`")
    return 0


def _opt_out_status(settings: Settings, indexer: BlindIndexer) -> int:
    """How far each blind-index key version has got in outreach's SMS opt-outs."""
    from services.outreach.reindex import usage

    try:
        found = asyncio.run(_sessions_of(settings, "outreach", usage))
    except Exception as exc:
        _problem("keys status", "outreach", exc)
        return 1
    for version in sorted(set(found.opt_outs) | set(indexer.versions)):
        line = f"sms opt-outs {version}: {found.opt_outs.get(version, 0)} of {found.total}"
        if found.only.get(version):
            line += f", {found.only[version]} under {version} only"
        print(line)
    behind = sum(n for v, n in found.only.items() if v != indexer.version)
    if behind:
        print(
            f"{behind} SMS opt-out(s) not indexed under {indexer.version}: run `portline keys "
            "reindex`"
        )
    return 0


def _reindex_targets(service: str | None) -> tuple[ServiceName, ...]:
    """The services `keys reindex` and `keys retire-index` cover: the scheduler's people and
    outreach's SMS opt-outs, or the one named."""
    return tuple(s for s in ("scheduler", "outreach") if service in (None, s))


def _cmd_keys_reindex(args: argparse.Namespace) -> int:
    from services.outreach.reindex import OptOutReport
    from services.outreach.reindex import reindex as reindex_opt_outs
    from services.scheduler.reindex import ReindexReport, reindex
    from shared.reseal import Progress

    settings = get_settings()
    keys = _keys(settings, "reindex")
    if keys is None:
        return 2
    sealer, indexer = keys

    def write(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    print(
        f"re-indexing under blind index {indexer.version}, at most {args.rate:g} rows a second "
        "(safe to stop and run again)",
        file=sys.stderr,
    )
    progress = Progress(write, bar=sys.stderr.isatty())
    status = 0
    for service in _reindex_targets(args.service):
        if service == "scheduler":

            async def people(sessions: async_sessionmaker[AsyncSession]) -> ReindexReport:
                return await reindex(
                    sessions, sealer, indexer, rate=args.rate, batch=args.batch, progress=progress
                )

            try:
                report = asyncio.run(_sessions_of(settings, "scheduler", people))
            except Exception as exc:
                _problem("keys reindex", "scheduler", exc)
                status = 1
                continue
            line = (
                f"scheduler person_key: {report.reindexed} people re-indexed under "
                f"{indexer.version}"
            )
            if report.passed_over:
                line += f", {report.passed_over} with no sealed identity to index (passed over)"
            if report.failed:
                line += f", {report.failed} whose identity opened under no sealing key given"
                status = 1
            print(line)
            continue

        async def opt_outs(sessions: async_sessionmaker[AsyncSession]) -> OptOutReport:
            return await reindex_opt_outs(
                sessions, sealer, indexer, rate=args.rate, batch=args.batch, progress=progress
            )

        try:
            found = asyncio.run(_sessions_of(settings, "outreach", opt_outs))
        except Exception as exc:
            _problem("keys reindex", "outreach", exc)
            status = 1
            continue
        line = (
            f"outreach sms_opt_out: {found.reindexed + found.recovered} opt-out(s) re-indexed "
            f"under {indexer.version}"
        )
        if found.recovered:
            line += f" ({found.recovered} from a number recovered from outreach's reports)"
        if found.unrecoverable:
            line += (
                f", {found.unrecoverable} with no number outreach knows (left under their old "
                "version: see docs/deploy.md)"
            )
        if found.failed:
            line += f", {found.failed} whose number opened under no sealing key given"
            status = 1
        print(line)
    return status


def _cmd_keys_retire_index(args: argparse.Namespace) -> int:
    from services.outreach.reindex import RetireRefused as OptOutsLeft
    from services.outreach.reindex import refuse_retire as refuse_opt_outs
    from services.outreach.reindex import retire as retire_opt_outs
    from services.scheduler.reindex import RetireRefused, retire

    settings = get_settings()
    keys = _keys(settings, "retire-index")
    if keys is None:
        return 2
    _sealer, indexer = keys
    if args.version in indexer.versions:
        print(
            f"portline keys retire-index: {args.version} is still configured here "
            f"(the versions configured here: {', '.join(indexer.versions)}): remove it from "
            "every service's settings and restart them first",
            file=sys.stderr,
        )
        return 2

    targets = _reindex_targets(args.service)

    async def check_opt_outs(sessions: async_sessionmaker[AsyncSession]) -> None:
        await refuse_opt_outs(sessions, args.version)

    async def people(sessions: async_sessionmaker[AsyncSession]) -> int:
        return await retire(sessions, args.version)

    async def opt_outs(sessions: async_sessionmaker[AsyncSession]) -> int:
        return await retire_opt_outs(sessions, args.version)

    service: ServiceName = "outreach"
    try:
        # Outreach is checked first: nothing is deleted anywhere while an opt-out would be lost.
        if "outreach" in targets:
            asyncio.run(_sessions_of(settings, "outreach", check_opt_outs))
        if "scheduler" in targets:
            service = "scheduler"
            deleted = asyncio.run(_sessions_of(settings, "scheduler", people))
            print(f"scheduler person_key: {deleted} key(s) under {args.version} deleted")
        if "outreach" in targets:
            service = "outreach"
            deleted = asyncio.run(_sessions_of(settings, "outreach", opt_outs))
            print(f"outreach sms_opt_out: {deleted} row(s) under {args.version} deleted")
    except (RetireRefused, OptOutsLeft) as exc:
        print(f"portline keys retire-index: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        _problem("keys retire-index", service, exc)
        return 1
    return 0


# --- retention -----------------------------------------------------------------------------------


def _cmd_prune(args: argparse.Namespace) -> int:
    from shared.retention import prune, rules_for

    settings = get_settings()
    if args.audit_log and not settings.audit_prune:
        print(
            "portline prune: the audit log is pruned only with PORTLINE_AUDIT_PRUNE=true "
            f"(it keeps {settings.audit_retention_days} days)",
            file=sys.stderr,
        )
        return 2
    status = 0
    rows = [("SERVICE", "RULE", "WOULD GO" if args.dry_run else "PRUNED")]
    for service in _chosen(args.service):

        async def work(
            sessions: async_sessionmaker[AsyncSession], service: ServiceName = service
        ) -> dict[str, int]:
            return await prune(
                sessions,
                rules_for(service),
                settings,
                now=_now(),
                service=service,
                include_append_only=args.audit_log,
                dry_run=args.dry_run,
            )

        try:
            done = asyncio.run(_sessions_of(settings, service, work, as_owner=args.audit_log))
        except Exception as exc:
            _problem("prune", service, exc)
            status = 1
            continue
        rows.extend((service, rule, str(n)) for rule, n in done.items())
    if len(rows) > 1:
        _table(rows)
    return status


# --- Kafka's side of backups ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    service: ServiceName
    consumer: str
    """The inbox's consumer key (service.name)."""
    topics: tuple[str, ...]
    start: Literal["earliest", "latest"]


def _groups(settings: Settings) -> dict[str, _Group]:
    """Every PORTline consumer group, by group id."""
    from shared.runtime import consumer_specs, group_id

    async def specs(runtime: Runtime) -> list[ConsumerSpec]:
        return consumer_specs(runtime.service, settings, runtime)

    found: dict[str, _Group] = {}
    for service in SERVICES:
        for spec in asyncio.run(_with_service(settings, service, specs)):
            found[group_id(settings, service, spec.name)] = _Group(
                service,
                f"{service}.{spec.name}",
                tuple(spec.topics),
                spec.start or settings.kafka_consumer_start,
            )
    return found


def _cmd_consumers_position(args: argparse.Namespace) -> int:
    from shared.recovery import take_position

    settings = get_settings()
    groups = {g: group.topics for g, group in _groups(settings).items()}
    kafka = KafkaConnection.from_settings(settings)
    position = asyncio.run(take_position(kafka, groups, now=_now()))
    text = position.to_json()
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        print(f"consumer positions of {len(groups)} groups written to {args.output}")
    else:
        print(text)
    return 0


def _cmd_consumers_restore(args: argparse.Namespace) -> int:
    from shared.recovery import (
        REGENERATED_TOPICS,
        KafkaPosition,
        ghost_candidates,
        known_event_ids,
        mark_ghosts,
        rewind,
    )

    settings = get_settings()
    position = KafkaPosition.from_json(Path(args.position).read_text(encoding="utf-8"))
    groups = _groups(settings)
    bootstrap = KafkaConnection.from_settings(settings)
    try:
        moved = asyncio.run(
            rewind(
                bootstrap,
                position,
                {g: group.topics for g, group in groups.items()},
                starts={g: group.start for g, group in groups.items()},
            )
        )
    except Exception as exc:
        print(
            f"portline consumers restore: Kafka refused to move the offsets "
            f"({type(exc).__name__}); stop every PORTline service first",
            file=sys.stderr,
        )
        return 1
    for name, count in moved.items():
        print(f"{name}: {count} partition(s) back to the backup's offsets")
    for topic, producer in REGENERATED_TOPICS.items():
        candidates = asyncio.run(ghost_candidates(bootstrap, topic, position.ends.get(topic, {})))

        async def known(
            sessions: async_sessionmaker[AsyncSession], ids: set[str] = candidates
        ) -> set[str]:
            return await known_event_ids(sessions, ids)

        ghosts = candidates - asyncio.run(_sessions_of(settings, producer, known))
        for group in groups.values():
            if topic not in group.topics:
                continue
            service, consumer = group.service, group.consumer

            async def mark(
                sessions: async_sessionmaker[AsyncSession],
                c: str = consumer,
                g: set[str] = ghosts,
            ) -> int:
                return await mark_ghosts(sessions, c, g, now=_now())

            added = asyncio.run(_sessions_of(settings, service, mark))
            print(
                f"{consumer}: {added} event(s) of {topic} from after the backup will be "
                f"skipped ({producer} makes them again)"
            )
    print("done: start the services")
    return 0


# --- the parsers ---------------------------------------------------------------------------------


def register_keys(keys_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`portline keys rotate | reseal | status | reindex | retire-index` (beside `keys
    generate`)."""
    rotate = keys_sub.add_parser(
        "rotate", help="put a new sealing key first (new writes use it; old keys still open)"
    )
    rotate.add_argument("--kid", help="the new key's id (default: the next k1, k2, ...)")
    rotate.set_defaults(func=_cmd_keys_rotate)
    reseal = keys_sub.add_parser(
        "reseal", help="re-seal stored PHI under the active key (resumable, throttled)"
    )
    reseal.add_argument("--service", choices=SERVICES, help="only this service")
    reseal.add_argument("--rate", type=float, default=500.0, help="rows per second at most")
    reseal.add_argument("--batch", type=int, default=200, help="rows per transaction")
    reseal.set_defaults(func=_cmd_keys_reseal)
    status = keys_sub.add_parser(
        "status",
        help="stored tokens under each key id; people and SMS opt-outs under each blind index "
        "version",
    )
    status.add_argument("--service", choices=SERVICES, help="only this service")
    status.set_defaults(func=_cmd_keys_status)
    reindex = keys_sub.add_parser(
        "reindex",
        help="compute people's blind keys and SMS opt-outs' indexes under the active blind "
        "index version from their sealed identity or number (resumable, throttled)",
    )
    reindex.add_argument(
        "--service",
        choices=("scheduler", "outreach"),
        help="only this service: the scheduler's people or outreach's SMS opt-outs (default: both)",
    )
    reindex.add_argument(
        "--rate", type=float, default=200.0, help="people (opt-outs, reports) per second at most"
    )
    reindex.add_argument("--batch", type=int, default=200, help="people (opt-outs) per transaction")
    reindex.set_defaults(func=_cmd_keys_reindex)
    retire = keys_sub.add_parser(
        "retire-index",
        help="delete the blind keys and SMS opt-out indexes of a version no service holds any "
        "more (refused while people or opt-outs are under it only)",
    )
    retire.add_argument("version", metavar="VERSION", help="the retired version, e.g. b1")
    retire.add_argument(
        "--service",
        choices=("scheduler", "outreach"),
        help="only this service: the scheduler's people or outreach's SMS opt-outs (default: both)",
    )
    retire.set_defaults(func=_cmd_keys_retire_index)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = sub.add_parser("dlq", help="dead letters: list, show, replay, resolve")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_sub.add_parser("list", help="dead letters of every service (open ones)")
    listing.add_argument("--service", choices=SERVICES, help="only this service")
    listing.add_argument("--all", action="store_true", help="resolved ones too")
    listing.set_defaults(func=_cmd_dlq_list)
    show = dlq_sub.add_parser("show", help="one dead letter: its reason and its event, sealed")
    show.add_argument("id", metavar="ID", help="SERVICE:NUMBER, as `portline dlq list` shows")
    show.set_defaults(func=_cmd_dlq_show)
    replay = dlq_sub.add_parser(
        "replay", help="apply dead letters again through their consumer's handler (once)"
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="SERVICE:NUMBER ...")
    replay.add_argument("--all", action="store_true", help="every open dead letter")
    replay.add_argument("--service", choices=SERVICES, help="with --all: only this service")
    replay.set_defaults(func=_cmd_dlq_replay)
    resolve = dlq_sub.add_parser(
        "resolve", help="close a dead letter without applying its event (a person's decision)"
    )
    resolve.add_argument("id", metavar="ID", help="SERVICE:NUMBER")
    resolve.set_defaults(func=_cmd_dlq_resolve)

    prune = sub.add_parser("prune", help="run the retention rules once")
    prune.add_argument("--service", choices=SERVICES, help="only this service")
    prune.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    prune.add_argument(
        "--audit-log",
        action="store_true",
        help="also the audit log's rows past PORTLINE_AUDIT_RETENTION_DAYS "
        "(needs PORTLINE_AUDIT_PRUNE=true)",
    )
    prune.set_defaults(func=_cmd_prune)

    consumers = sub.add_parser("consumers", help="Kafka consumer groups, for backups")
    consumers_sub = consumers.add_subparsers(dest="consumers_command", required=True)
    position = consumers_sub.add_parser(
        "position", help="record every group's offsets (just before a database backup)"
    )
    position.add_argument("--output", metavar="FILE", help="write to FILE (default: stdout)")
    position.set_defaults(func=_cmd_consumers_position)
    restore = consumers_sub.add_parser(
        "restore", help="after a database restore: move the groups back to the backup's offsets"
    )
    restore.add_argument("--position", required=True, metavar="FILE")
    restore.set_defaults(func=_cmd_consumers_restore)
