"""`portline intake ...` and `portline partners ...`: the intake commands of the CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from services.intake.classify import Definition
from shared.settings import Settings, get_settings

__all__ = ["register"]

T = TypeVar("T")


def _with_db(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from shared.db import create_engine, session_factory

    async def go() -> T:
        engine = create_engine(
            settings.db_url, service="intake", schema=settings.schema_for("intake")
        )
        try:
            return await work(session_factory(engine))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _cmd_check(args: argparse.Namespace) -> int:
    from services.intake.check import check_file, render_text

    definition = Definition(args.definition)
    status = 0
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            print(f"portline intake check: no such file: {name}", file=sys.stderr)
            status = 2
            continue
        for result in check_file(path, definition=definition, show_phi=args.show_phi):
            print(json.dumps(result, sort_keys=True) if args.json else render_text(result))
    return status


def _cmd_seed(_args: argparse.Namespace) -> int:
    from services.intake.seed import seed_demo
    from shared.clock import SystemClock

    settings = get_settings()
    if not settings.is_development:
        print("portline intake seed-demo: only in development", file=sys.stderr)
        return 2
    demo = _with_db(
        settings,
        lambda sessions: seed_demo(sessions, clock=SystemClock(), var_dir=settings.var_dir),
    )
    print(f"Demo program '{demo.program_id}' is ready:")
    print(f"  EMS agency   {demo.ems_partner:<14} API key {demo.ems_api_key}")
    print(f"  hospital     {demo.hospital_partner:<14} API key {demo.hospital_api_key}")
    print(f"               MLLP sending facility (MSH-4): {demo.hospital_facility}")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from services.intake.partners import PartnerDirectory
    from services.intake.pipeline import HL7Intake
    from services.intake.replay import replay_rejected
    from services.intake.reports import Protector
    from services.intake.store.factory import open_store
    from shared.clock import SystemClock
    from shared.db import create_engine, session_factory
    from shared.sealing import load_keys

    settings = get_settings()
    if not args.all and not args.ids:
        print("portline intake replay: name --id ID (repeatable) or --all", file=sys.stderr)
        return 2
    sealer, indexer = load_keys(settings)
    clock = SystemClock()

    async def work() -> int:
        # The running service's relay publishes what a replay stores (its next poll).
        engine = create_engine(
            settings.db_url, service="intake", schema=settings.schema_for("intake")
        )
        sessions = session_factory(engine)
        store = open_store(settings, engine, sessions)
        try:
            intake = HL7Intake(
                store=store,
                directory=PartnerDirectory(sessions, ttl_seconds=0),
                protector=Protector(sealer, indexer),
                clock=clock,
            )
            results = await replay_rejected(
                sessions, intake, sealer, ids=[uuid.UUID(i) for i in args.ids]
            )
        finally:
            await store.close()
            await engine.dispose()
        for r in results:
            print(
                f"{r.inbound_id} {r.ack_code}"
                + (f" (ERR {r.hl7_error_code})" if r.hl7_error_code else "")
            )
        accepted = sum(r.ack_code == "AA" for r in results)
        print(f"replayed {len(results)} message(s); {accepted} accepted")
        return 0 if all(r.ack_code == "AA" for r in results) else 1

    return asyncio.run(work())


def _cmd_partners(args: argparse.Namespace) -> int:
    from services.intake import partners
    from shared.clock import SystemClock

    settings = get_settings()
    now = SystemClock().now()
    pem = b""
    if args.partners_command == "add-certificate":
        try:
            pem = Path(args.certificate).read_bytes()
        except OSError as exc:
            print(f"portline partners: cannot read {args.certificate}: {exc}", file=sys.stderr)
            return 2

    async def work(sessions: Any) -> int:
        async with sessions() as session, session.begin():
            if args.partners_command == "add-program":
                await partners.create_program(
                    session,
                    program_id=args.id,
                    name=args.name,
                    timezone=args.timezone,
                    definition=args.definition,
                )
                print(f"program {args.id} saved")
            elif args.partners_command == "add":
                await partners.create_partner(
                    session,
                    partner_id=args.id,
                    program_id=args.program,
                    name=args.name,
                    kind=args.kind,
                    now=now,
                )
                for facility in args.facility:
                    await partners.add_facility(session, partner_id=args.id, facility=facility)
                print(f"partner {args.id} added")
            elif args.partners_command == "add-facility":
                key = await partners.add_facility(
                    session, partner_id=args.id, facility=args.facility
                )
                print(f"{args.id} may send as {key}")
            elif args.partners_command == "remove-facility":
                if not await partners.remove_facility(
                    session, partner_id=args.id, facility=args.facility
                ):
                    print(f"{args.id} was not allowed to send as {args.facility}", file=sys.stderr)
                    return 1
                print(f"{args.id} may no longer send as {args.facility}")
            elif args.partners_command == "add-network":
                cidr = await partners.add_network(session, partner_id=args.id, network=args.network)
                print(f"{args.id} may connect over MLLP from {cidr}")
            elif args.partners_command == "remove-network":
                if not await partners.remove_network(
                    session, partner_id=args.id, network=args.network
                ):
                    print(f"{args.id} had no network {args.network}", file=sys.stderr)
                    return 1
                print(f"{args.id} may no longer connect from {args.network}")
            elif args.partners_command == "add-certificate":
                fingerprint = await partners.add_certificate(
                    session, partner_id=args.id, pem=pem, now=now
                )
                print(f"{args.id} is recognised by the certificate sha256:{fingerprint}")
            elif args.partners_command == "remove-certificate":
                if not await partners.remove_certificate(
                    session, partner_id=args.id, fingerprint=args.fingerprint
                ):
                    print(f"{args.id} had no certificate {args.fingerprint}", file=sys.stderr)
                    return 1
                print(f"{args.id} is no longer recognised by that certificate")
            elif args.partners_command == "set-mllp-auth":
                require = None if args.require == "auto" else args.require
                await partners.set_mllp_auth(session, partner_id=args.id, require=require)
                print(f"{args.id}'s MLLP connections must show: {args.require}")
            elif args.partners_command in ("disable", "enable"):
                disabled = args.partners_command == "disable"
                if not await partners.set_disabled(
                    session, partner_id=args.id, disabled=disabled, now=now
                ):
                    print(f"no partner {args.id}", file=sys.stderr)
                    return 1
                print(f"partner {args.id} {'disabled' if disabled else 'enabled'}")
            elif args.partners_command == "issue-key":
                issued = await partners.issue_key(
                    session, partner_id=args.id, now=now, label=args.label
                )
                print(f"key id {issued.key_id}\nAPI key (shown once): {issued.api_key}")
            elif args.partners_command == "revoke-key":
                if not await partners.revoke_key(session, key_id=args.key_id, now=now):
                    print(f"no active key {args.key_id}", file=sys.stderr)
                    return 1
                print(f"key {args.key_id} revoked")
            else:
                print(json.dumps(await partners.list_partners(session), indent=2, default=str))
        return 0

    try:
        return _with_db(settings, work)
    except (LookupError, ValueError) as exc:
        print(f"portline partners: {exc}", file=sys.stderr)
        return 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    intake = sub.add_parser("intake", help="intake tools: check files, replay, demo seed")
    intake_sub = intake.add_subparsers(dest="intake_command", required=True)

    check = intake_sub.add_parser(
        "check", help="print the overdose decision, reasons and event for every message"
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--json", action="store_true", help="one JSON object per message")
    check.add_argument("--show-phi", action="store_true", help="do not mask identity")
    check.add_argument(
        "--definition", choices=[d.value for d in Definition], default=Definition.OPIOID.value
    )
    check.set_defaults(func=_cmd_check)

    replay = intake_sub.add_parser("replay", help="resubmit rejected HL7 messages")
    replay.add_argument("--id", dest="ids", action="append", default=[], metavar="INBOUND_ID")
    replay.add_argument("--all", action="store_true", help="every rejected message not replayed")
    replay.set_defaults(func=_cmd_replay)

    seed = intake_sub.add_parser("seed-demo", help="create the demo program and partners")
    seed.set_defaults(func=_cmd_seed)

    p = sub.add_parser(
        "partners", help="programs, partners, facilities, MLLP credentials and API keys"
    )
    psub = p.add_subparsers(dest="partners_command", required=True)
    prog = psub.add_parser("add-program", help="create or update a program")
    prog.add_argument("--id", required=True)
    prog.add_argument("--name", required=True)
    prog.add_argument("--timezone", default="America/New_York")
    prog.add_argument("--definition", choices=[d.value for d in Definition], default="opioid")
    add = psub.add_parser(
        "add", help="create a partner (EMS agency, hospital, law enforcement) of a program"
    )
    add.add_argument("--id", required=True)
    add.add_argument("--program", required=True)
    add.add_argument("--name", required=True)
    add.add_argument("--kind", choices=["ems", "hospital", "law_enforcement"], required=True)
    add.add_argument("--facility", action="append", default=[], help="MSH-4 (hospitals)")
    fac = psub.add_parser("add-facility", help="let a hospital send as this MSH-4")
    fac.add_argument("--id", required=True)
    fac.add_argument("--facility", required=True)
    unfac = psub.add_parser("remove-facility", help="stop a hospital sending as this MSH-4")
    unfac.add_argument("--id", required=True)
    unfac.add_argument("--facility", required=True)
    net = psub.add_parser(
        "add-network", help="let a hospital's MLLP connections come from this network (CIDR)"
    )
    net.add_argument("--id", required=True)
    net.add_argument("--network", required=True, metavar="CIDR")
    unnet = psub.add_parser(
        "remove-network", help="stop accepting a hospital's MLLP connections from a network"
    )
    unnet.add_argument("--id", required=True)
    unnet.add_argument("--network", required=True, metavar="CIDR")
    cert = psub.add_parser(
        "add-certificate",
        help="recognise a hospital's MLLP connections by this TLS client certificate",
    )
    cert.add_argument("--id", required=True)
    cert.add_argument("--certificate", required=True, metavar="FILE.pem")
    uncert = psub.add_parser(
        "remove-certificate", help="stop recognising a client certificate (by fingerprint)"
    )
    uncert.add_argument("--id", required=True)
    uncert.add_argument("--fingerprint", required=True, metavar="SHA256")
    auth = psub.add_parser("set-mllp-auth", help="what a hospital's MLLP connections must show")
    auth.add_argument("--id", required=True)
    auth.add_argument(
        "--require", required=True, choices=["certificate", "network", "both", "auto"]
    )
    for verb in ("disable", "enable"):
        toggle = psub.add_parser(verb, help=f"{verb} a partner (all its keys and facilities)")
        toggle.add_argument("id")
    issue = psub.add_parser("issue-key", help="issue an API key (shown once)")
    issue.add_argument("id")
    issue.add_argument("--label", default="")
    revoke = psub.add_parser("revoke-key", help="revoke an API key by its key id")
    revoke.add_argument("key_id")
    psub.add_parser("list", help="every partner with its facilities, credentials and keys")
    p.set_defaults(func=_cmd_partners)
