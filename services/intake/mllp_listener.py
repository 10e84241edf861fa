"""The MLLP listener: authenticated, bounded partner connections, one durable ACK per message.

Connections stay open across messages. Each is authenticated when it opens, before any of its
messages is processed, by its TLS client certificate (mutual TLS) and its source address
(``authenticate`` says which partners it may speak for; an empty set, nobody). Who it may
speak for is looked at again for every frame, so a removed network or certificate takes
effect within the partner cache's time.

Bounded: at most ``max_connections`` in total and ``max_connections_per_partner`` per partner
(unauthenticated connections share one such allowance); a connection over either is closed
at once. A frame must arrive whole within ``frame_timeout`` of its first byte (a sender
feeding one byte a minute is cut off), and a connection that has sent no message for
``idle_timeout`` is closed (bytes between frames, whitespace or junk, do not count).

Framing problems (bytes outside a frame, an oversized message) are answered with an AR on the
same connection instead of closing it; a frame cut off by the peer closing is logged and
dropped, since nobody is left to acknowledge it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from services.intake.hl7 import HL7Error, build_ack, normalize, read_header
from services.intake.metrics import INTAKE_MESSAGES, MLLP_CONNECTIONS
from services.intake.mllp import FramingError, MllpDecoder, frame
from shared import tracing
from shared.inbox import is_transient

__all__ = ["FramingRejected", "MllpListener", "MllpPeer"]

log = logging.getLogger(__name__)

_NOBODY = "(unauthenticated)"
_UNVERIFIED = "(not verified yet)"


class FramingRejected(HL7Error):
    """The bytes on the connection were not a well-formed MLLP frame."""

    code = "framing_error"
    default_hl7_error_code = "100"


@dataclass(frozen=True, slots=True)
class MllpPeer:
    """What a connection showed: its source address and client certificate's fingerprint."""

    address: str | None
    fingerprint: str | None


Authenticate = Callable[[MllpPeer], Awaitable[frozenset[str]]]
"""The partners a peer may speak for (empty: nobody)."""
Handle = Callable[[bytes, frozenset[str]], Awaitable[str]]
"""A frame's payload and the partners its connection may speak for -> the ACK."""


def _peer(writer: asyncio.StreamWriter) -> MllpPeer:
    peername = writer.get_extra_info("peername")
    address = str(peername[0]) if isinstance(peername, tuple) and peername else None
    fingerprint = None
    tls = writer.get_extra_info("ssl_object")
    if isinstance(tls, ssl.SSLObject):
        der = tls.getpeercert(binary_form=True)
        if der:
            fingerprint = hashlib.sha256(der).hexdigest()
    return MllpPeer(address, fingerprint)


class MllpListener:
    """Accepts MLLP connections and answers each framed message with `handle`'s ACK."""

    def __init__(
        self,
        handle: Handle,
        *,
        authenticate: Authenticate,
        host: str,
        port: int,
        now: Callable[[], datetime],
        max_message_bytes: int = 1_048_576,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = 600.0,
        frame_timeout: float = 30.0,
        max_connections: int = 256,
        max_connections_per_partner: int = 32,
    ) -> None:
        self._handle = handle
        self._authenticate = authenticate
        self._host = host
        self._port = port
        self._now = now
        self._max = max_message_bytes
        self._ssl = ssl_context
        self._idle = idle_timeout
        self._frame_timeout = frame_timeout
        self._max_connections = max_connections
        self._per_partner = max_connections_per_partner
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._open: Counter[str] = Counter()
        """Open connections per partner id (or per unauthenticated peers, together)."""

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept,
            self._host,
            self._port,
            ssl=self._ssl,
            limit=2**20,
            ssl_handshake_timeout=self._frame_timeout if self._ssl else None,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Close the partners' connections before waiting for the server: from Python 3.12
        # wait_closed() waits for every connection to end.
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        buckets: tuple[str, ...] = ()
        try:
            if len(self._connections) >= self._max_connections:
                MLLP_CONNECTIONS.labels("refused_total_limit").inc()
                return
            # Counted from here, before the first await: connections accepted together
            # cannot all pass the check above while each is still authenticating.
            self._connections.add(task)
            peer = _peer(writer)
            partners: frozenset[str] | None
            try:
                partners = await self._authenticate(peer)
            except Exception:
                # The partner registry cannot be read (the database is down): every frame
                # asks again, and is answered AE until it can be, so nothing is lost.
                log.warning("cannot authenticate an MLLP connection yet; answering AE meanwhile")
                partners = None
            buckets = (_UNVERIFIED,) if partners is None else tuple(sorted(partners)) or (_NOBODY,)
            if any(self._open[b] >= self._per_partner for b in buckets):
                MLLP_CONNECTIONS.labels("refused_partner_limit").inc()
                buckets = ()
                return
            self._open.update(buckets)
            outcome = "unverified" if partners is None else "accepted" if partners else None
            MLLP_CONNECTIONS.labels(outcome or "unauthenticated").inc()
            if partners is not None and not partners:
                log.warning("MLLP connection from a peer no partner is registered for")
            await self._serve(reader, writer, peer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            self._open.subtract(buckets)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: MllpPeer
    ) -> None:
        decoder = MllpDecoder(self._max)
        loop = asyncio.get_running_loop()
        last_activity = loop.time()
        frame_started: float | None = None
        answering: float | None = None
        handle: asyncio.TimerHandle

        def watchdog() -> None:
            # One timer per connection, not one per read. The idle time counts from the last
            # message answered (or the connection's start); bytes outside a frame (whitespace,
            # junk) are not activity, so a peer trickling them is cut off like an idle one.
            # A frame that is arriving has its own deadline, but never later than the idle
            # time plus one frame's: restarting frames (bare VTs) keeps no connection open.
            # A message being answered (a slow commit) is not cut off by either: it arrived in
            # time. Only an answer that takes longer than both together is given up on.
            nonlocal handle
            now = loop.time()
            if answering is not None:
                deadline = answering + self._idle + self._frame_timeout
                if now >= deadline:
                    log.warning("an MLLP message was not answered in time; connection closed")
                    writer.transport.abort()
                    return
            elif frame_started is not None:
                deadline = min(frame_started, last_activity + self._idle) + self._frame_timeout
                if now >= deadline:
                    MLLP_CONNECTIONS.labels("cut_slow_frame").inc()
                    writer.transport.abort()
                    return
            elif now >= last_activity + self._idle:
                writer.transport.abort()
                return
            else:
                deadline = last_activity + self._idle
            handle = loop.call_at(deadline, watchdog)

        handle = loop.call_at(last_activity + self._idle, watchdog)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    truncated = decoder.at_eof()
                    if truncated is not None:
                        log.warning("connection closed mid-frame", extra={"code": truncated.code})
                    return
                starts = decoder.frames_started
                for item in decoder.feed(data):
                    if isinstance(item, FramingError):
                        ack = self._framing_ack(item)
                    else:
                        frame_started = None  # this frame has arrived
                        answering = loop.time()
                        ack = await self._answer(item, peer)
                        answering = None
                        last_activity = loop.time()
                    writer.write(frame(ack.encode()))
                    await writer.drain()
                if decoder.in_frame and decoder.frames_started != starts:
                    # a frame began in this chunk: its deadline starts now
                    frame_started = loop.time()
                    handle.cancel()
                    watchdog()
                elif not decoder.in_frame and frame_started is not None:
                    # the frame ended without an answer to wait for (one too large, say)
                    frame_started = None
                    handle.cancel()
                    watchdog()
        finally:
            handle.cancel()

    async def _answer(self, payload: bytes, peer: MllpPeer) -> str:
        # Each frame starts a trace: its report's outbox row carries it on (shared.tracing).
        if not tracing.enabled():  # tracing off (the default): no span to set up per frame
            return await self._answer_frame(payload, peer)
        with tracing.span(
            "mllp frame", kind=tracing.SpanKind.SERVER, attributes={"portline.channel": "mllp"}
        ):
            return await self._answer_frame(payload, peer)

    async def _answer_frame(self, payload: bytes, peer: MllpPeer) -> str:
        try:
            partners = await self._authenticate(peer)  # cached: a removal takes effect soon
            return await self._handle(payload, partners)
        except Exception as exc:
            if is_transient(exc):
                log.warning("partner registry unavailable; answering AE")
            else:
                log.exception("message handling failed; answering AE")
            INTAKE_MESSAGES.labels("hl7", "error").inc()
            try:  # echo MSH-10 when the header can be read, so the sender can match the AE
                header = read_header(normalize(payload))
            except HL7Error:
                header = None
            return build_ack(
                header,
                "AE",
                now=self._now(),
                control_id=uuid.uuid4().hex[:20],
                text="Temporarily unable to process; resend.",
            )

    def _framing_ack(self, error: FramingError) -> str:
        return build_ack(
            None,
            "AR",
            now=self._now(),
            control_id=uuid.uuid4().hex[:20],
            error=FramingRejected(error.message),
        )
