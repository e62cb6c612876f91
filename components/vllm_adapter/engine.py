"""The vLLM engine itself: start, warm up, stop, and the few internals read from it (the
only module that touches vLLM's engine; `vllm_bridge` holds its OpenAI layer)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from components.core.host import pid_alive
from components.vllm_adapter import gpu_preflight, internals
from components.vllm_adapter.engine_spec import EngineSpec

if TYPE_CHECKING:
    from argparse import Namespace

    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)


def parse_engine_args(spec: EngineSpec) -> Namespace:
    """vLLM's own CLI parser, so defaults and validation match `vllm serve` exactly."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    args: Namespace = parser.parse_args(spec.cli_args)
    return args


def waiting_stat_logger(waiting_outside: Callable[[], int]) -> type:
    """vLLM's Prometheus stat logger, except that `vllm:num_requests_waiting` also counts
    the requests waiting in the service's fair queue, in front of the engine.

    Autoscalers (KEDA, HPA through prometheus-adapter) and routers (the Gateway API
    Inference Extension's endpoint picker, vLLM's production-stack) read that gauge by
    name. The engine alone sees at most ENGINE_QUEUE_DEPTH sequences waiting: under
    overload the rest wait in our queue, where those tools would never see them.
    `vllm:num_requests_waiting_by_reason` keeps the engine's own count. Given to AsyncLLM
    as its Prometheus logger (vLLM then adds no default one), so every other `vllm:*`
    metric stays vLLM's own.
    """
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    # Its base, the method and attribute it relies on: internals.STAT_LOGGER.
    class WaitingIncludesQueue(PrometheusStatLogger):
        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:
            super().record(scheduler_stats, iteration_stats, mm_cache_stats, engine_idx)
            if scheduler_stats is not None:
                engine_waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                gauge: Any = self.gauge_scheduler_waiting[engine_idx]
                gauge.set(engine_waiting + waiting_outside())

    return WaitingIncludesQueue


async def start_engine(args: Namespace, waiting_outside: Callable[[], int] = lambda: 0) -> AsyncLLM:
    gpu_preflight.require_ready()  # a driver or GPU this CUDA build cannot use: one line, not torch's trace
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    engine_args = AsyncEngineArgs.from_cli_args(args)
    started = time.monotonic()
    # In a thread: loading takes from seconds to minutes, and the probes must answer
    # meanwhile. Created outside the loop, AsyncLLM starts its output handler lazily on
    # the first generate(), from the loop.
    engine = await asyncio.to_thread(
        AsyncLLM.from_engine_args, engine_args, usage_context=UsageContext.OPENAI_API_SERVER,
        stat_loggers=[waiting_stat_logger(waiting_outside)],
    )
    logger.info("engine started in %.1f s", time.monotonic() - started)
    return engine


async def warm_up(engine: AsyncLLM, max_tokens: int = 4) -> float:
    """A short generation, so that the first user request does not pay for lazy init.

    It asks for logprobs: vLLM's sampler ranks sampled tokens with a function under
    `torch.compile` (`vllm/v1/sample/ops/logprobs.py`), compiled on first use. Left to the
    first client that asks for logprobs, that compile stopped every tenant's generation
    for about 4 s on a 2-core host; here it happens before the service is ready.
    """
    from vllm import SamplingParams

    started = time.monotonic()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=1)
    async for _ in engine.generate("Hello", params, request_id=f"warmup-{time.time_ns()}"):
        pass
    elapsed = time.monotonic() - started
    logger.info("engine warm-up generation took %.2f s", elapsed)
    return elapsed


def freeze_startup_heap() -> None:
    """What `vllm serve` does once started: the startup heap (torch, transformers, vLLM:
    millions of objects) moves out of the garbage collector's way. Without it every oldest-
    generation collection walked that heap, seen as the largest cost in the API process's
    CPU profile at concurrency 64 (our process had the only one of the two that did)."""
    internals.FREEZE_GC_HEAP.resolve()()


# vLLM 0.32 internals read below (AsyncLLM), one hop per entry of internals.py (checked
# against the installed vLLM by tests/unit/test_vllm_canary.py); at run time a path that is
# gone is logged at ERROR once and counted (vllm_engine_introspection_failures_total), never
# silently skipped.
PIDS_PATH = internals.dotted(internals.PIDS_PATH)
UNFINISHED_PATH = internals.dotted(internals.UNFINISHED_PATH)
ERRORED_PATH = internals.ERRORED.name
_reported: set[str] = set()


def _no_hook(path: str) -> None:
    return None


def vllm_internal(engine: Any, path: str, on_missing: Callable[[str], None] = _no_hook) -> Any:
    """The object at a dotted path inside vLLM's engine, or None, loudly, if it is gone."""
    obj = engine
    for part in path.split("."):
        if not hasattr(obj, part):
            if path not in _reported:
                _reported.add(path)
                logger.error("vLLM internal %r not found (missing %r): was vLLM upgraded?", path, part)
            on_missing(path)
            return None
        obj = getattr(obj, part)
    return obj


def engine_core_pids(engine: Any, on_missing: Callable[[str], None] = _no_hook) -> list[int]:
    """PIDs of the engine core processes (for the watchdog, probes and the failure tests)."""
    procs = vllm_internal(engine, PIDS_PATH, on_missing) or []
    return [proc.pid for proc in procs if getattr(proc, "pid", None)]


def unfinished_requests(engine: Any, on_missing: Callable[[str], None] = _no_hook) -> int | None:
    """Requests the engine still holds (running or waiting), from its client's own books.

    vLLM's vllm:num_requests_running gauge is refreshed only on engine steps, so it keeps
    its last value once the engine goes idle; this count does not.
    """
    count = vllm_internal(engine, UNFINISHED_PATH, on_missing)
    return count() if count is not None else None


def shutdown_engine(engine: AsyncLLM | None) -> None:
    if engine is None:
        return
    pids = engine_core_pids(engine)
    engine.shutdown()
    logger.info("engine shut down (engine core pids %s)", pids)


def engine_dead(engine: AsyncLLM | None, core_pids: list[int], on_missing: Callable[[str], None] = _no_hook) -> bool:
    """vLLM marks the engine `errored` when its core fails; a killed core process is
    seen by its pid (vLLM notices that only on the next request)."""
    if engine is None:
        return False
    if vllm_internal(engine, ERRORED_PATH, on_missing):
        return True
    dead = [pid for pid in core_pids if not pid_alive(pid)]
    if dead:
        logger.error("engine core process(es) gone: %s", dead)
    return bool(dead)
