"""A steady MLLP load, sent the way a hospital's interface engine sends: several long-lived
connections, each sending one message at a time and resending it until it gets AA.

An AE, or a connection that dies before the ACK, means "send it again" (on a new connection
when the old one died). An AR, an ACK for another message, or no answer within the ACK
timeout is a failure: the load records it and moves on, and the test asserts there were none.
Every answer is kept with when its message was sent and when the answer came, so that a test
can tell what was answered during a fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from tests.hl7_builder import ack_fields, adt, framed, hl7_time, routine

__all__ = ["Answer", "Message", "MllpLoad", "adt_messages"]

RETRY_SECONDS = 0.1
"""How long the sender waits before resending after an AE or a broken connection."""


@dataclass(frozen=True)
class Answer:
    code: str
    ack: str
    sent_at: float
    """time.monotonic() when the message was written."""
    answered_at: float


@dataclass
class Message:
    control_id: str
    framed: bytes
    overdose: bool
    answers: list[Answer] = field(default_factory=list)
    unanswered: int = 0
    """Sends whose connection died before an answer came."""

    @property
    def accepted(self) -> Answer | None:
        """The first AA this message got."""
        return next((a for a in self.answers if a.code == "AA"), None)

    def again(self) -> Message:
        """The same message to send again, with nothing received yet."""
        return replace(self, answers=[], unanswered=0)


def adt_messages(count: int, *, overdose_every: int = 25) -> list[Message]:
    """`count` ED visits, each with its own MSH-10 and visit number; one in `overdose_every`
    is an opioid overdose (with its own name), the rest are routine."""
    run = uuid.uuid4().hex[:8]
    admitted = hl7_time(datetime.now(UTC) - timedelta(hours=1))
    messages = []
    for n in range(count):
        control = f"F{run}-{n:05d}"
        overdose = n % overdose_every == overdose_every - 1
        if overdose:
            text = adt(control, visit=f"V{control}", admit=admitted, family=f"Fx{run}{n}")
        else:
            text = routine(control, visit=f"V{control}", admit=admitted)
        messages.append(Message(control, framed(text), overdose))
    return messages


class MllpLoad:
    """`connections` senders sharing the messages; `rate` (messages a second over all
    connections, None: as fast as intake answers) paces the first send of each message."""

    def __init__(
        self,
        port: int,
        messages: Iterable[Message],
        *,
        connections: int = 4,
        rate: float | None = None,
        ack_timeout: float = 20.0,
        deadline: float = 150.0,
    ) -> None:
        self.port = port
        self.messages = list(messages)
        self.failures: list[str] = []
        self._queue: Iterator[Message] = iter(self.messages)
        self._connections = connections
        self._interval = connections / rate if rate else 0.0
        self._ack_timeout = ack_timeout
        self._deadline = time.monotonic() + deadline
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> MllpLoad:
        self._tasks = [
            asyncio.create_task(self._sender(), name=f"mllp-load-{i}")
            for i in range(self._connections)
        ]
        return self

    async def stop(self) -> None:
        """Send no new message; wait until the ones in flight are acknowledged."""
        self._stopping = True
        await self.finished()

    async def finished(self) -> None:
        """Wait until every message was sent and acknowledged (or the load was stopped)."""
        await asyncio.gather(*self._tasks)

    def accepted(self) -> list[Message]:
        return [m for m in self.messages if m.accepted is not None]

    def answers(self) -> list[tuple[Message, Answer]]:
        return [(m, a) for m in self.messages for a in m.answers]

    async def _sender(self) -> None:
        loop = asyncio.get_running_loop()
        next_send = loop.time()
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while not self._stopping:
                message = next(self._queue, None)
                if message is None:
                    return
                if self._interval:
                    await asyncio.sleep(max(0.0, next_send - loop.time()))
                    next_send = max(next_send, loop.time()) + self._interval
                connection = await self._deliver(message, connection)
        finally:
            if connection is not None:
                connection[1].close()

    async def _deliver(
        self,
        message: Message,
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Send until AA, reconnecting as needed; the connection to carry on with."""
        while True:
            if time.monotonic() > self._deadline:
                self.failures.append(f"{message.control_id}: no AA before the load's deadline")
                return connection
            if connection is None:
                try:
                    connection = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port), 5
                    )
                except (OSError, TimeoutError):
                    await asyncio.sleep(RETRY_SECONDS)  # intake is not listening (yet)
                    continue
            reader, writer = connection
            sent_at = time.monotonic()
            try:
                writer.write(message.framed)
                await writer.drain()
                raw = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), self._ack_timeout)
            except TimeoutError:
                self.failures.append(f"{message.control_id}: no answer in {self._ack_timeout}s")
                writer.close()
                return None
            except (OSError, asyncio.IncompleteReadError):
                message.unanswered += 1
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                connection = None
                await asyncio.sleep(RETRY_SECONDS)
                continue
            ack = raw.strip(b"\x0b\x1c\r").decode()
            code, control_id, _ = ack_fields(ack)
            message.answers.append(Answer(code, ack, sent_at, time.monotonic()))
            if control_id != message.control_id:
                self.failures.append(f"{message.control_id}: answered for {control_id!r}")
                return connection
            if code == "AA":
                return connection
            if code != "AE":
                self.failures.append(f"{message.control_id}: {ack!r}")
                return connection
            await asyncio.sleep(RETRY_SECONDS)
