"""The engine's start, in order: the engine arguments decided (components/vllm_adapter/
engine_spec.py), vLLM's compile cache, the bundled model converted on CPU, the engine started
and warmed up, the OpenAI app built on the serving bridge. Stops the engine again if any later
step fails."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.core import host
from components.core.settings import Settings
from components.core.settings_env import export_engine_environment
from components.edge.ledger import usage_report
from components.vllm_adapter import bundled_model, engine_spec
from components.vllm_adapter import engine as engine_mod
from components.vllm_adapter.compile_cache import CompileCache
from components.vllm_adapter.engine_spec import EngineSpec

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI

    from components.app.parts import Parts
    from components.vllm_adapter.vllm_bridge import OpenAIBridge

logger = logging.getLogger(__name__)


@dataclass
class Started:
    spec: EngineSpec
    compile_cache: CompileCache
    engine: Any
    bridge: OpenAIBridge
    app: FastAPI
    engine_pids: list[int]


async def decide_spec(settings: Settings) -> EngineSpec:
    gpus = await asyncio.to_thread(host.gpu_count)  # imports torch: seconds
    return engine_spec.resolve_spec(
        settings.engine, gpus, settings.resilience.graceful_shutdown_timeout, settings.server.otlp_traces_endpoint)


def prepare_compile_cache(settings: Settings, spec: EngineSpec, parts: Parts) -> CompileCache:
    cache = CompileCache.prepare(settings.engine.cache_dir, engine_spec.compile_key_parts(spec),
                                 enabled="--enforce-eager" not in spec.cli_args)
    if cache.was_cached:
        parts.metrics.warm_cache_hits.inc()
    logger.info("compile cache %s (found: %s)", cache.path, cache.was_cached)
    return cache


async def start_engine(settings: Settings, spec: EngineSpec, cache: CompileCache, parts: Parts,
                       debug_info: Callable[[], dict[str, Any]], on_engine: Callable[[Any], None]) -> Started:
    """`on_engine` learns of the engine as soon as it runs, so that a shutdown during the
    rest of the start still stops it."""
    from components.api.openai_app import build_aliases, build_openai_app
    from components.vllm_adapter.vllm_bridge import OpenAIBridge

    export_engine_environment(settings.engine, spec.engine_env, str(cache.path))
    parts.gpu.start()
    engine_spec.log_choices(spec, settings.engine)
    if not spec.on_gpu and not settings.engine.model_path:
        await asyncio.to_thread(bundled_model.ensure_converted, settings.engine.cache_dir)

    aliases = build_aliases(spec.served_name, settings.api.model_aliases)
    args = engine_mod.parse_engine_args(spec)
    engine = await engine_mod.start_engine(args, lambda: parts.gate.admission.waiting)
    on_engine(engine)
    try:
        bridge = await OpenAIBridge.create(engine, args)
        app = build_openai_app(
            bridge, aliases, settings.api, parts.gate, debug_info,
            stall_timeout_s=settings.resilience.stream_stall_timeout,
            ledger=parts.ledger, tokens_per_minute=settings.limits.tokens_per_minute,
            usage_report=lambda: usage_report(parts.ledger, parts.keys.current, settings.limits.tokens_per_minute),
            store=parts.store, grammar_tokenizer=spec.model,
        )
        pids = engine_mod.engine_core_pids(engine, lambda path: parts.metrics.introspection_failures.labels(path).inc())
        if settings.engine.warmup:
            await engine_mod.warm_up(engine)
    except BaseException:
        engine_mod.shutdown_engine(engine)
        raise
    engine_mod.freeze_startup_heap()
    return Started(spec, cache, engine, bridge, app, pids)
