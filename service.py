"""BentoML service: wires settings, the vLLM engine and the OpenAI-compatible front door."""

from __future__ import annotations

import asyncio
import logging
import os

import bentoml

from components.core.settings_env import validate_settings
from components.edge import bentoml_metrics
from components.edge.gateway import Gateway, GatewayMiddleware
from components.edge.keys_file import check_keys_file

logger = logging.getLogger("service")

# Empty at import (so `bentoml build` needs no engine); filled in the startup hook.
gateway = Gateway()

# The one import-time check: a bad setting must stop `bentoml serve` itself with one line,
# not a worker that BentoML's process manager would restart again and again.
check_keys_file(validate_settings().auth.keys_file)
# Before BentoML builds its middleware: its request metrics get bounded path labels, and
# its OpenTelemetry middleware no span per message.
bentoml_metrics.install()


@bentoml.service(
    name="llm-service",
    resources={"gpu": 1, "gpu_type": "nvidia-tesla-t4"},
    # Long generations: BentoML's own timeout answers 504 if no first byte came in time.
    traffic={"timeout": 3600},
    http={"port": 8080},
)
@bentoml.asgi_app(gateway.app, path="/")
class LLMService:
    def __init__(self) -> None:
        from components.app.runtime import Runtime
        from components.core.logs import configure_logging
        from components.core.settings_env import load_settings

        settings = load_settings()
        configure_logging(settings.server.log_level)
        self.runtime = Runtime(settings)
        self._starting: asyncio.Future[None] | None = None
        # The front door (probes, auth, limits) serves while the model loads.
        gateway.install_front_door(self.runtime.front_door)

    @bentoml.on_startup
    async def start(self) -> None:
        # In the background: the server listens (probes say "starting", the API says 503
        # model_loading) while the model downloads, loads and warms up.
        self._starting = asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        from components.vllm_adapter.gpu_preflight import GpuNotReady

        try:
            app = await self.runtime.start()
        except GpuNotReady as error:
            # Its one line says what the node needs; a traceback would only bury it.
            logger.error("startup failed: %s", error)
            os._exit(1)
        except Exception:
            logger.exception("startup failed; exiting")
            os._exit(1)
        gateway.install_app(app)
        # Counted among the replicas from ready on, not from its first request: an idle
        # replica that nobody counted would take a whole limit alone in a Redis outage.
        self.runtime.limiter.replicas.start()
        logger.info("service ready")

    @bentoml.on_shutdown
    async def stop(self) -> None:
        # Also when startup never ran (a worker stopped before its first event loop turn).
        if self._starting is not None:
            self._starting.cancel()
        gateway.uninstall()
        await self.runtime.shutdown()

    async def __is_ready__(self) -> bool:
        return self.runtime.readiness()[0]

    async def __is_alive__(self) -> bool:
        # Alive while loading: a slow model load must not get the pod restarted.
        return self.runtime.is_alive()


# The decorators add this class method; mypy sees only the class as written.
LLMService.add_asgi_middleware(GatewayMiddleware, gateway=gateway)  # type: ignore[attr-defined]
