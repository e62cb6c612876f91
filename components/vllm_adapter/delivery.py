"""What the engine produced for one generation, counted from its outputs' token ids (never
from text). Nothing here imports vLLM: the outputs are read by their public fields."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Delivery:
    """Each engine request's prompt once, each choice's tokens. Nothing reaches a client
    that did not pass through here first, so charging this total never charges less than
    was delivered, however the request ends (components/serving/generation.py).
    `unknown`: an engine request that streams no deltas (non-streaming: one output at the
    end) was cut off before that output, so how far it got is not known."""

    prompt_tokens: dict[str, int] = field(default_factory=dict)
    choice_tokens: dict[tuple[str, int], int] = field(default_factory=dict)
    unknown: bool = False
    first_token_at: float | None = None  # time.monotonic() of the first generated token

    @property
    def generated(self) -> int:
        """Tokens generated so far by its longest choice: how far one sequence has got."""
        return max(self.choice_tokens.values(), default=0)

    @property
    def total(self) -> int:
        return sum(self.prompt_tokens.values()) + sum(self.choice_tokens.values())

    async def count(self, outputs: AsyncIterator[Any], request_id: str, prompt_len: int,
                    delta: bool) -> AsyncIterator[Any]:
        finished = cut = False
        try:
            async for output in outputs:
                self.prompt_tokens[request_id] = len(output.prompt_token_ids or ()) or prompt_len
                for choice in output.outputs:
                    slot = (request_id, choice.index)
                    tokens = len(choice.token_ids)
                    seen = self.choice_tokens.get(slot, 0)
                    self.choice_tokens[slot] = seen + tokens if delta else max(seen, tokens)
                    if tokens and self.first_token_at is None:
                        self.first_token_at = time.monotonic()
                finished = finished or output.finished
                yield output
        except (GeneratorExit, asyncio.CancelledError):
            cut = True
            raise
        finally:
            if cut and not finished:
                # Cut off (disconnect, time limit, drain): the engine may have read the
                # prompt already. An engine error instead charges only what came out.
                self.prompt_tokens[request_id] = max(self.prompt_tokens.get(request_id, 0), prompt_len)
                self.unknown = self.unknown or not delta
            # Closing this wrapper must close vLLM's generator now: that aborts the request.
            close = getattr(outputs, "aclose", None)
            if close is not None:
                await close()
