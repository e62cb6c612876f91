"""Everything a running service holds, assembled at startup and taken down at shutdown."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from components import bundled_model, engine as engine_mod
from components.admission import Admission
from components.auth import KeyStore
from components.engine import EngineSpec
from components.middleware import install_middleware
from components.ratelimit import RateLimiter
from components.settings import Settings, export_engine_environment

if TYPE_CHECKING:
    from fastapi import FastAPI

    from components.vllm_bridge import OpenAIBridge

logger = logging.getLogger(__name__)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class Runtime:
    settings: Settings
    spec: EngineSpec
    engine: Any
    bridge: OpenAIBridge
    app: FastAPI
    admission: Admission
    limiter: RateLimiter
    keys: KeyStore
    started_at: float = field(default_factory=time.time)
    ready: bool = False

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        from components.openai_app import build_aliases, build_openai_app
        from components.vllm_bridge import OpenAIBridge

        keys = KeyStore.from_keys(settings.auth.api_keys)
        if not keys.enabled:
            logger.warning("API_KEYS is empty: authentication is DISABLED, anyone who reaches the port can use the API")
        limiter = RateLimiter(settings.limits)
        admission = Admission(settings.engine.max_num_seqs, settings.limits.max_queue_size)

        spec = engine_mod.resolve_spec(settings.engine, gpu_count())
        export_engine_environment(settings.engine, on_cpu=not spec.on_gpu)
        logger.info("serving model %s as %r: %s", spec.model, spec.served_name, spec.reason)
        if settings.engine.attention_backend == "SDPA":
            logger.warning("VLLM_ATTENTION_BACKEND=SDPA: vLLM 0.32 has no SDPA decoder backend; using vLLM's choice")
        if settings.engine.swap_space is not None:
            logger.warning("SWAP_SPACE is ignored: vLLM 0.32's engine has no CPU swap space")
        if spec.tool_call_parser is None:
            logger.info("no tool-call parser for this model: tool_choice='auto' requests get a 400")
        if not spec.on_gpu and not settings.engine.model_path:
            bundled_model.ensure_converted(settings.engine.cache_dir)

        aliases = build_aliases(spec.served_name, settings.api.model_aliases)
        args = engine_mod.parse_engine_args(spec)
        engine = await engine_mod.start_engine(args)
        try:
            bridge = await OpenAIBridge.create(engine, args)
            app = build_openai_app(bridge, aliases, settings.api, admission)
            runtime = cls(settings, spec, engine, bridge, app, admission, limiter, keys)
            if settings.engine.warmup:
                await engine_mod.warm_up(engine)
        except BaseException:
            engine_mod.shutdown_engine(engine)
            raise
        runtime.ready = True
        return runtime

    def front_door(self, downstream: Any) -> Any:
        """The middleware around BentoML's whole app (probes and /metrics included)."""
        return install_middleware(
            downstream,
            keys=self.keys,
            limiter=self.limiter,
            cors_origins=self.settings.limits.cors_origins,
            max_request_bytes=self.settings.api.max_request_bytes,
            protect_metrics=self.settings.auth.protect_metrics,
        )

    async def shutdown(self) -> None:
        self.ready = False
        engine_mod.shutdown_engine(self.engine)
        await self.limiter.close()
