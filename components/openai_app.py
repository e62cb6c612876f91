"""The OpenAI-compatible HTTP surface: routes, model aliases, request limits, error mapping."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from components.errors import (
    EngineFailure,
    InvalidRequest,
    ModelNotFound,
    ServiceError,
    from_status,
    render_json,
)
from components.lifecycle import Gate
from components.settings import DEFAULT_ALIASES, ApiSettings
from components.vllm_bridge import OpenAIBridge, Stream, request_models, to_service_error, vllm_error_types

logger = logging.getLogger(__name__)
ChatCompletionRequest, CompletionRequest, StreamOptions = request_models()


def build_aliases(served: str, configured: dict[str, str]) -> dict[str, str]:
    """alias -> served name. Defaults map common OpenAI names; MODEL_ALIASES adds or overrides."""
    aliases = {name: served for name in DEFAULT_ALIASES}
    for alias, target in configured.items():
        if target != served:
            raise ValueError(f"MODEL_ALIASES: {alias!r} points to {target!r}, but the served model is {served!r}")
        aliases[alias] = target
    aliases.pop(served, None)
    return aliases


class ErrorResponse(Response):
    media_type = "application/json"

    def __init__(self, error: ServiceError) -> None:
        super().__init__(render_json(error), status_code=error.status, headers=error.headers)


def _validation_error(exc: RequestValidationError) -> InvalidRequest:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.", code="invalid_json")
    param = ".".join(loc) or None
    message = str(first.get("msg", "Invalid request."))
    if param:
        message = f"{param}: {message}"
    return InvalidRequest(message, param=param)


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _check_limits(body: Any, limits: ApiSettings) -> None:
    n = getattr(body, "n", None) or 1
    if n > limits.max_n:
        raise InvalidRequest(f"n must be at most {limits.max_n}.", param="n")
    messages = getattr(body, "messages", None)
    if messages is not None and len(messages) > limits.max_messages:
        raise InvalidRequest(f"At most {limits.max_messages} messages are allowed.", param="messages")
    for index, message in enumerate(messages or ()):
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role not in _ROLES:
            raise InvalidRequest(f"messages[{index}].role must be one of {sorted(_ROLES)}.", param=f"messages.{index}.role")
    if limits.max_tokens_limit:
        requested = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if requested is not None and requested > limits.max_tokens_limit:
            raise InvalidRequest(f"max_tokens must be at most {limits.max_tokens_limit}.", param="max_tokens")
        if requested is None:
            body.max_tokens = limits.max_tokens_limit
    stop = getattr(body, "stop", None)
    if isinstance(stop, list) and len(stop) > limits.max_stop_sequences:
        raise InvalidRequest(f"At most {limits.max_stop_sequences} stop sequences are allowed.", param="stop")


async def _until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Run `work` until done or until the client disconnects; on disconnect cancel it,
    which closes vLLM's generator and aborts the request in the engine."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise asyncio.CancelledError("client disconnected")
    return task.result()


def build_openai_app(
    bridge: OpenAIBridge,
    aliases: dict[str, str],
    limits: ApiSettings,
    gate: Gate,
    debug_info: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    app = FastAPI(title="OpenAI-compatible LLM service", docs_url="/docs", redoc_url=None)
    served = bridge.served_name
    created = int(time.time())

    def resolve_model(body: Any) -> None:
        name = body.model
        if name is None or name == served:
            body.model = served
        elif name in aliases:
            body.model = aliases[name]
        else:
            raise ModelNotFound(f"The model '{name}' does not exist.", param="model")

    async def generate(body: Any, request: Request, call: Callable[[Any, Request], Awaitable[Any]]) -> Response:
        resolve_model(body)
        _check_limits(body, limits)
        # Engine request ids must be unique; a client's X-Request-ID is a correlation id only.
        body.request_id = uuid.uuid4().hex
        state = request.scope.setdefault("state", {})
        state["model"] = body.model
        streaming = bool(getattr(body, "stream", False))
        state["stream"] = streaming
        forward_usage = True
        if streaming:
            # Always ask vLLM for the usage chunk (exact token accounting); pass it on
            # only if the client asked for it.
            forward_usage = bool(body.stream_options and body.stream_options.include_usage)
            body.stream_options = StreamOptions(
                include_usage=True,
                continuous_usage_stats=bool(body.stream_options and body.stream_options.continuous_usage_stats),
            )

        ticket = await _until_disconnect(request, gate.enter(bridge.engine_ids(body)))
        if not streaming:
            try:
                result = await _until_disconnect(request, call(body, request))
            except ServiceError as error:
                ticket.finish(error)
                raise
            except asyncio.CancelledError:
                ticket.finish(cancelled=True)
                raise
            except BaseException:
                ticket.finish(EngineFailure("unexpected failure"))
                raise
            ticket.finish()
            if ticket.abort_error is not None:
                raise ticket.abort_error
            state["usage"] = result.usage.model_dump() if getattr(result, "usage", None) else None
            state["finish_reason"] = _finish_reason(result)
            ttft_ms = getattr(getattr(result, "metrics", None), "time_to_first_token_ms", None)
            state["ttft_s"] = ttft_ms / 1000 if ttft_ms is not None else None
            return JSONResponse(result.model_dump(mode="json"))
        try:
            stream = await call(body, request)
        except ServiceError as error:
            ticket.finish(error)
            raise
        except BaseException:
            ticket.finish(cancelled=True)
            raise
        stream.forward_usage = forward_usage
        stream.ticket = ticket
        # The slot is held until the stream ends: the engine works until then.
        return StreamingResponse(_sse(stream, state), media_type="text/event-stream")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:  # type: ignore[valid-type]
        return await generate(body, request, bridge.chat)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:  # type: ignore[valid-type]
        return await generate(body, request, bridge.completion)

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": served}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(served)] + [model_card(a) for a in sorted(aliases)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != served and model_id not in aliases:
            raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
        return model_card(model_id)

    if debug_info is not None:

        @app.get("/debug/runtime")
        async def debug_runtime() -> dict[str, Any]:
            return debug_info()

    install_error_handlers(app)
    return app


def _finish_reason(result: Any) -> str | None:
    choices = getattr(result, "choices", None) or []
    return getattr(choices[0], "finish_reason", None) if choices else None


async def _sse(stream: Stream, state: dict[str, Any]) -> AsyncIterator[str]:
    completed = False
    first = True
    try:
        async for event in stream:
            if first:
                first = False
                if "started" in state:
                    state["ttft_s"] = time.perf_counter() - state["started"]
            yield event
        completed = True
    finally:
        # Runs on completion and on client disconnect (Starlette cancels the response):
        # closing vLLM's generator aborts the request in the engine.
        await stream.aclose()
        if stream.ticket is not None:
            stream.ticket.finish(stream.error, cancelled=not completed)
        state["usage"] = stream.usage
        if stream.error is not None:
            state["error_type"] = stream.error.code


def install_error_handlers(app: FastAPI) -> None:
    def respond(request: Request, error: ServiceError) -> Response:
        request.scope.setdefault("state", {})["error_type"] = error.code or error.type
        return ErrorResponse(error)

    async def service_error(request: Request, exc: ServiceError) -> Response:
        return respond(request, exc)

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        media_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if request.method == "POST" and media_type.lower() != "application/json":
            return respond(
                request, InvalidRequest("Content-Type must be application/json.", code="unsupported_media_type")
            )
        return respond(request, _validation_error(exc))

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404:
            detail = "Unknown route."
        return respond(request, from_status(exc.status_code, detail))

    async def engine_side(request: Request, exc: Exception) -> Response:
        # vLLM validates some fields while building its request objects and raises
        # (VLLMValidationError, ValueError, ...): mapped as vLLM's own server maps them.
        error = to_service_error(exc)
        if error.status >= 500:
            logger.error("request failed: %s", type(exc).__name__, exc_info=exc)
        return respond(request, error)

    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error")
        return respond(request, ServiceError("The server failed to process the request."))

    app.add_exception_handler(ServiceError, service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    # Specific types go through Starlette's ExceptionMiddleware; only the catch-all
    # Exception handler runs in ServerErrorMiddleware, which re-raises after answering.
    for exc_type in (*vllm_error_types(), ValueError, TypeError, OverflowError, RecursionError):
        app.add_exception_handler(exc_type, engine_side)
    app.add_exception_handler(Exception, unexpected)
