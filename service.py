"""BentoML service: wires settings, the vLLM engine and the OpenAI-compatible front door."""

from __future__ import annotations

import logging

import bentoml

from components.gateway import Gateway, GatewayMiddleware

logger = logging.getLogger("service")

# Empty at import (so `bentoml build` needs no engine); filled in the startup hook.
gateway = Gateway()


@bentoml.service(
    name="llm-service",
    resources={"gpu": 1, "gpu_type": "nvidia-tesla-t4"},
    # Long generations: BentoML's own timeout answers 504 if no first byte came in time.
    traffic={"timeout": 3600},
)
@bentoml.asgi_app(gateway.app, path="/")
class LLMService:
    def __init__(self) -> None:
        from components.settings import load_settings

        self.settings = load_settings()
        self.runtime = None

    @bentoml.on_startup
    async def start(self) -> None:
        from components.runtime import Runtime

        self.runtime = await Runtime.start(self.settings)
        gateway.install(self.runtime.app, self.runtime.front_door)
        logger.info("service ready")

    @bentoml.on_shutdown
    async def stop(self) -> None:
        gateway.uninstall()
        if self.runtime is not None:
            await self.runtime.shutdown()

    async def __is_ready__(self) -> bool:
        return self.runtime is not None and self.runtime.ready

    async def __is_alive__(self) -> bool:
        return True


LLMService.add_asgi_middleware(GatewayMiddleware, gateway=gateway)
