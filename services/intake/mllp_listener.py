"""The MLLP listener: long-lived partner connections, one durable ACK per message.

Connections stay open across messages. Framing problems (bytes outside a frame, an oversized
message) are answered with an AR on the same connection instead of closing it; a frame cut
off by the peer closing is logged and dropped, since nobody is left to acknowledge it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

from services.intake.hl7 import HL7Error, build_ack
from services.intake.metrics import MLLP_CONNECTIONS
from services.intake.mllp import FramingError, MllpDecoder, frame

__all__ = ["FramingRejected", "MllpListener"]

log = logging.getLogger(__name__)


class FramingRejected(HL7Error):
    """The bytes on the connection were not a well-formed MLLP frame."""

    code = "framing_error"
    default_hl7_error_code = "100"


class MllpListener:
    """Accepts MLLP connections and answers each framed message with `handle`'s ACK."""

    def __init__(
        self,
        handle: Callable[[bytes], Awaitable[str]],
        *,
        host: str,
        port: int,
        now: Callable[[], datetime],
        max_message_bytes: int = 1_048_576,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = 600.0,
    ) -> None:
        self._handle = handle
        self._host = host
        self._port = port
        self._now = now
        self._max = max_message_bytes
        self._ssl = ssl_context
        self._idle = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

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
        self._connections.add(task)
        MLLP_CONNECTIONS.labels("accepted").inc()
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = MllpDecoder(self._max)
        loop = asyncio.get_running_loop()
        last_activity = loop.time()
        handle: asyncio.TimerHandle

        def watchdog() -> None:
            # One timer per connection, not one per read: idle connections are closed.
            nonlocal handle
            if loop.time() - last_activity >= self._idle:
                writer.transport.abort()
                return
            handle = loop.call_at(last_activity + self._idle, watchdog)

        handle = loop.call_at(last_activity + self._idle, watchdog)
        try:
            while True:
                data = await reader.read(65536)
                last_activity = loop.time()
                if not data:
                    truncated = decoder.at_eof()
                    if truncated is not None:
                        log.warning("connection closed mid-frame", extra={"code": truncated.code})
                    return
                for item in decoder.feed(data):
                    ack = (
                        self._framing_ack(item)
                        if isinstance(item, FramingError)
                        else await self._answer(item)
                    )
                    writer.write(frame(ack.encode()))
                    await writer.drain()
                    last_activity = loop.time()
        finally:
            handle.cancel()

    async def _answer(self, payload: bytes) -> str:
        try:
            return await self._handle(payload)
        except Exception:
            log.exception("message handling failed; answering AE")
            return build_ack(
                None,
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
