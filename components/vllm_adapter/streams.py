"""The event streams a generation writes out, as one protocol (`EventStream`, what
components/serving/generation.py consumes), and the OpenAI one: vLLM's SSE stream with its
error events rewritten into our shape. Every option is given at construction."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from components.core.errors import ServiceError, render_sse
from components.vllm_adapter.engine_call import UsageShown
from components.vllm_adapter.vllm_errors import error_from_event, to_service_error

# vLLM reports a failure inside a stream as an event of this form.
_ERROR_PREFIX = 'data: {"error"'
_USAGE_MARKER = '"usage":{'


SHOW_ALL = UsageShown()


def _nothing() -> None:
    return None


def _alive() -> bool:
    return False


class EventStream(Protocol):
    """A generation's events as SSE text, read once. `usage` (in the chat shape that
    metrics, logs and the ledger read) and `error` are known once the events are read;
    closing it aborts the engine work left, if any."""

    @property
    def usage(self) -> dict[str, Any] | None: ...

    @property
    def error(self) -> ServiceError | None: ...

    def __aiter__(self) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


class Stream:
    """An OpenAI SSE stream from vLLM whose error events have been rewritten into our shape.

    It records the usage the routes always ask vLLM for (exact token accounting) and shows
    the client only what it asked for (`shown`). `on_finished` is told once the usage-only
    chunk arrives: vLLM sends it when every choice has finished, so the engine is done with
    the request; only writing is left. `engine_dead`: whether the engine reports itself
    dead; an error event is only text, and this typed fact is what tells an
    EngineDeadError vLLM caught apart from any other 5xx."""

    def __init__(self, source: AsyncIterator[str], shown: UsageShown = SHOW_ALL,
                 on_finished: Callable[[], None] = _nothing, engine_dead: Callable[[], bool] = _alive) -> None:
        self.source = source
        self.shown = shown
        self.on_finished = on_finished
        self.engine_dead = engine_dead
        self.usage: dict[str, Any] | None = None
        self.error: ServiceError | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._events()

    async def _events(self) -> AsyncIterator[str]:
        try:
            async for event in self.source:
                if event.startswith(_ERROR_PREFIX):
                    self.error = error_from_event(event, self.engine_dead)
                    yield render_sse(self.error)
                    return
                if _USAGE_MARKER in event:
                    final, rewritten = self._take_usage(event)
                    if final:
                        self.on_finished()
                        if not self.shown.final:
                            continue
                    elif rewritten is not None:
                        event = rewritten
                yield event
        except Exception as exc:  # noqa: BLE001 - every engine fault ends the stream cleanly
            self.error = to_service_error(exc)
            yield render_sse(self.error)

    def _take_usage(self, event: str) -> tuple[bool, str | None]:
        """(whether `event` is the final usage-only chunk, the event rewritten without its
        usage when the client did not ask for usage in every chunk)."""
        try:
            chunk = json.loads(event[len("data: ") :])
        except ValueError:
            return False, None
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        if bool(usage) and not chunk.get("choices"):
            return True, None
        if usage and not self.shown.per_chunk:
            del chunk["usage"]
            return False, f"data: {json.dumps(chunk, ensure_ascii=False, separators=(',', ':'))}\n\n"
        return False, None

    async def aclose(self) -> None:
        close = getattr(self.source, "aclose", None)
        if close is not None:
            await close()
