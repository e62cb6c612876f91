"""The charge rule as a property over generated engine runs (pure logic; the same rule on the
real engine: tests/integration/test_invariant_charging.py).

A generation is some engine requests (one per prompt), each with n choices, streamed as
deltas or as one final output, read by a client that may go away (or be cut off by a time
limit) at any point, or fail in the engine. Whatever happens: the charge is at least what
the client was given (the prompts of the requests it got tokens from, and every token it
got) and at most the reservation (prompts + n x max_tokens each).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from components.serving.generation import charge
from components.vllm_adapter import call_scope
from components.vllm_adapter.delivery import Delivery
from components.vllm_adapter.engine_call import EngineCall
from components.vllm_adapter.vllm_hooks import install_engine_tags


class Engine:
    """vLLM's `generate` shape: an async generator of RequestOutputs for one request."""

    def __init__(self, runs: dict[str, list[Any]], fail_at: int | None) -> None:
        self.runs = runs
        self.fail_at = fail_at

    def generate(self, prompt: Any, sampling_params: Any, request_id: str, **kwargs: Any) -> AsyncIterator[Any]:
        return self._outputs(self.runs[request_id])

    async def _outputs(self, outputs: list[Any]) -> AsyncIterator[Any]:
        for index, output in enumerate(outputs):
            if index == self.fail_at:
                raise RuntimeError("the engine failed")
            await asyncio.sleep(0)
            yield output


@st.composite
def generations(draw: st.DrawFn) -> dict[str, Any]:
    prompts = draw(st.lists(st.integers(1, 50), min_size=1, max_size=3))
    n = draw(st.integers(1, 4))
    max_tokens = draw(st.integers(1, 12))
    delta = draw(st.booleans())
    runs: dict[str, list[Any]] = {}
    for number, prompt in enumerate(prompts):
        lengths = [draw(st.integers(0, max_tokens)) for _ in range(n)]
        if delta:  # each choice's tokens in pieces, choices interleaved
            pieces = [(i, 1) for i, length in enumerate(lengths) for _ in range(length)]
            pieces = draw(st.permutations(pieces))
            outputs = [SimpleNamespace(prompt_token_ids=[0] * prompt, finished=False,
                                       outputs=[SimpleNamespace(index=i, token_ids=[1] * k)]) for i, k in pieces]
        else:
            outputs = [SimpleNamespace(prompt_token_ids=[0] * prompt, finished=False, outputs=[
                SimpleNamespace(index=i, token_ids=[1] * length) for i, length in enumerate(lengths)])]
        if outputs:
            outputs[-1].finished = True
        runs[f"r{number}"] = outputs
    return {"prompts": prompts, "n": n, "max_tokens": max_tokens, "delta": delta, "runs": runs,
            "stop_after": draw(st.one_of(st.none(), st.integers(0, 30))),
            "cancel": draw(st.booleans()), "fail_at": draw(st.one_of(st.none(), st.integers(0, 5)))}


async def consume(case: dict[str, Any], delivery: Delivery) -> tuple[int, set[str]]:
    """Read every engine request like vLLM's serving layer, until the client leaves; return the
    completion tokens the client was given and the requests it got tokens from."""
    engine = Engine(case["runs"], case["fail_at"])
    install_engine_tags(engine)
    given_tokens, seen = 0, set()
    kind = SimpleNamespace(name="DELTA" if case["delta"] else "FINAL_ONLY")

    async def read() -> None:
        nonlocal given_tokens
        for number, prompt in enumerate(case["prompts"]):
            stream = engine.generate({"prompt_token_ids": [0] * prompt}, SimpleNamespace(extra_args=None,
                                     output_kind=kind), f"r{number}")
            try:
                async for output in stream:
                    if case["stop_after"] is not None and given_tokens >= case["stop_after"]:
                        return
                    given_tokens += sum(len(choice.token_ids) for choice in output.outputs)
                    seen.add(f"r{number}")
            finally:
                await stream.aclose()  # type: ignore[attr-defined]

    with call_scope.engine_call(EngineCall(delivery=delivery)):  # the task starts in this context
        task = asyncio.ensure_future(read())
    if case["cancel"]:  # a time limit or a disconnect interrupts the task itself
        for _ in range(case["stop_after"] or 0):
            await asyncio.sleep(0)
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return given_tokens, seen


# Bounded in `make test`; the closing note's larger run sets CHARGING_EXAMPLES.
@settings(max_examples=int(os.environ.get("CHARGING_EXAMPLES", "60")), derandomize=True, deadline=None)
@given(generations())
def test_the_charge_is_between_what_was_delivered_and_what_was_reserved(case: dict[str, Any]) -> None:
    delivery = Delivery()
    completion, seen = asyncio.run(consume(case, delivery))
    prompt_of = dict(zip((f"r{i}" for i in range(len(case["prompts"]))), case["prompts"], strict=True))
    delivered = completion + sum(prompt_of[r] for r in seen)
    reserved = sum(p + case["n"] * case["max_tokens"] for p in case["prompts"])
    charged = charge(delivery, reserved)
    assert delivered <= charged <= reserved, (delivered, charged, reserved)
