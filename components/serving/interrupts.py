"""How a request's ASGI call ends early: the client closed the connection, stopped reading
(a stall), or the service interrupts it (time limit, drain, engine death). Used by
components/serving/generation.py around the whole life of a generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from starlette.types import Message, Receive, Send

from components.core.errors import ClientClosed, ServiceError, StreamStalled


class Interrupts:
    """Interrupts the request's task (client gone, time limit, drain, engine death) and
    raises the reason instead of CancelledError. The generation's whole life runs inside,
    so an interrupt also stops work not yet handed to the engine, and closing vLLM's
    generators aborts whatever the engine already holds.
    """

    def __init__(self, receive: Receive, write: Writer) -> None:
        self._receive = receive
        self._write = write
        self.reason: ServiceError | None = None

    async def __aenter__(self) -> Interrupts:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Interrupts needs a running task")
        self._task = task
        self._watcher = asyncio.ensure_future(self._watch())
        self._write.watch(self.interrupt)
        return self

    def interrupt(self, reason: ServiceError) -> None:
        # After the last byte, uvicorn reports a disconnect for every request: not one.
        if self.reason is None and not self._write.complete:
            self.reason = reason
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.interrupt(ClientClosed("The client closed the connection."))
                return

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._watcher.cancel()
        self._write.unwatch()
        if self.reason is not None:
            self._task.uncancel()
        if self._task.cancelling():
            # Cancelled from outside too (BentoML's timeout middleware has answered): stop,
            # whatever the block ended with (vLLM turns a cancelled non-streaming request
            # into its own 400).
            raise asyncio.CancelledError from None
        if self.reason is not None:
            raise self.reason from None


class Writer:
    """`send` with a bound on how long the client may keep us waiting (a full socket).

    Inside the request's interrupts, sends are timed by one timer per response instead of
    an `asyncio.timeout` per message (a stream writes one message per token, and a timeout
    each was a measurable share of the front door's CPU at high concurrency): a send notes
    when it began, and the timer, re-armed at most once per stall limit, interrupts the
    request when the send pending has waited the whole limit. Outside them (an error
    answer written after the interrupts have ended), each send has its own timeout.
    """

    def __init__(self, send: Send, stall_timeout_s: float, wire: Send | None = None) -> None:
        self._send = send
        self._wire = wire
        self._direct: Send | None = None
        self._stall_timeout_s = stall_timeout_s
        self.started = False
        self.complete = False
        self._loop = asyncio.get_running_loop()
        self._since: float | None = None  # when the send in progress began
        self._on_stall: Callable[[ServiceError], None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, on_stall: Callable[[ServiceError], None]) -> None:
        self._on_stall = on_stall
        self._timer = self._loop.call_at(self._loop.time() + self._stall_timeout_s, self._check)

    def unwatch(self) -> None:
        self._on_stall = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stalled(self) -> StreamStalled:
        return StreamStalled(f"The client read nothing for {self._stall_timeout_s:g} s.")

    def _check(self) -> None:
        now = self._loop.time()
        since = self._since
        if since is not None and now - since >= self._stall_timeout_s and self._on_stall is not None:
            self._timer = None
            self._on_stall(self._stalled())
            return
        self._timer = self._loop.call_at((since if since is not None else now) + self._stall_timeout_s, self._check)

    async def __call__(self, message: Message) -> None:
        send = self._send
        if message["type"] == "http.response.start":
            self.started = True
            self._direct = self._wire if message["status"] == 200 else None
        elif self._direct is not None and message.get("more_body", False):
            # A 200's middle chunks go straight to the wire: every middleware here and in
            # BentoML acts on the response start (headers, status) and on its last message
            # (BentoML's request metrics), both still sent through them, and passes the
            # chunks between untouched. A stream writes one chunk per token; some twenty
            # wrappers each were most of the front door's CPU at high concurrency.
            send = self._direct
        if self._on_stall is None:
            try:
                async with asyncio.timeout(self._stall_timeout_s):
                    await send(message)
            except TimeoutError:
                raise self._stalled() from None
        else:
            self._since = self._loop.time()
            try:
                await send(message)
            finally:
                self._since = None
        # Set once the last byte is out, so that a stall on the last message is still cut.
        if message["type"] != "http.response.start" and not message.get("more_body", False):
            self.complete = True

    async def json(self, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self({"type": "http.response.start", "status": 200, "headers": headers})
        await self({"type": "http.response.body", "body": body})
