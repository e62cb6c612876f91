"""The OpenAI-compatible HTTP surface: routes, model aliases, request limits, error mapping."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from components.api.anthropic import Messages
from components.api.responses_api import Responses
from components.core.context import request_context
from components.core.errors import (
    InvalidRequest,
    ModelNotFound,
    ServiceError,
    from_status,
)
from components.core.request_fields import declared
from components.core.responses import ErrorResponse
from components.core.settings import DEFAULT_ALIASES, ApiSettings
from components.edge.ledger import Ledger, token_limits
from components.edge.response_store import Store
from components.serving.generation import OPENAI, Call, Dialect, GenerationResponse
from components.serving.grammar_guard import GrammarGuard, grammar_specs
from components.serving.lifecycle import Gate
from components.serving.validation import validate
from components.vllm_adapter.vllm_bridge import (
    OpenAIBridge,
    api_models,
    request_models,
    to_service_error,
    vllm_error_types,
)

logger = logging.getLogger(__name__)
ChatCompletionRequest, CompletionRequest, _ = request_models()
MessagesRequest, CountTokensRequest, ResponsesRequest, TokenizeRequest, DetokenizeRequest = api_models()


def build_aliases(served: str, configured: dict[str, str]) -> dict[str, str]:
    """alias -> served name. Defaults map common OpenAI names; MODEL_ALIASES adds or overrides."""
    aliases = {name: served for name in DEFAULT_ALIASES}
    for alias, target in configured.items():
        if target != served:
            raise ValueError(f"MODEL_ALIASES: {alias!r} points to {target!r}, but the served model is {served!r}")
        aliases[alias] = target
    aliases.pop(served, None)
    return aliases


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


def build_openai_app(
    bridge: OpenAIBridge,
    aliases: dict[str, str],
    limits: ApiSettings,
    gate: Gate,
    debug_info: Callable[[], dict[str, Any]] | None = None,
    *,
    stall_timeout_s: float,
    ledger: Ledger | None = None,
    tokens_per_minute: int = 0,
    usage_report: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    store: Store,
    grammar_tokenizer: str,
) -> FastAPI:
    # `grammar_tokenizer`: the tokenizer the engine loads (its model path or hub name); the
    # grammar guard compiles every grammar against it, as the engine will.
    grammars = GrammarGuard(limits.grammar_timeout_s, grammar_tokenizer)

    async def check_grammars(request: Request) -> frozenset[str]:
        # A dependency of every route: FastAPI solves it (once per request) before it
        # validates the body into vLLM's model, whose validators already build
        # structural-tag grammars on the loop; the generation routes take its keys along.
        if request.method == "POST" and (body := await request.body()):
            try:
                parsed = json.loads(body)
            except ValueError:
                return frozenset()  # FastAPI refuses it, in our error shape
            built = await grammars.check(grammar_specs(parsed))
            bridge.grammars_built(built)
            return built
        return frozenset()

    # No 307 to the slashed or unslashed route: its Location would echo the Host header.
    app = FastAPI(title="OpenAI-compatible LLM service", docs_url="/docs", redoc_url=None, redirect_slashes=False,
                  dependencies=[Depends(check_grammars)])
    served = bridge.served_name
    created = int(time.time())

    def visible(policy: Any, name: str) -> bool:
        """A key with a model allowlist sees the models it names (served name or alias)."""
        return policy is None or policy.may_use(name)

    def resolve_model(body: Any, policy: Any) -> None:
        name = body.model
        if name is not None and name != served and name not in aliases or not visible(policy, name or served):
            # OpenAI's answer for a model the key cannot see: it does not exist for it.
            raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")
        body.model = served if name is None or name == served else aliases[name]

    async def generate(body: Any, request: Request, call: Call, built: frozenset[str],
                       dialect: Dialect = OPENAI) -> Response:
        ctx = request_context(request.scope)
        resolve_model(body, ctx.policy)
        generation = validate(body, limits, key=ctx.tenant, token_limits=token_limits(ctx.policy, tokens_per_minute),
                              policy=ctx.policy, grammars=built)
        ctx.model = body.model
        ctx.stream = generation.stream
        return GenerationResponse(generation, request, call, gate, stall_timeout_s, ledger, dialect)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request,  # type: ignore[valid-type]
                               built: frozenset[str] = Depends(check_grammars)) -> Response:
        return await generate(body, request, bridge.chat, built)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request,  # type: ignore[valid-type]
                          built: frozenset[str] = Depends(check_grammars)) -> Response:
        return await generate(body, request, bridge.completion, built)

    # The Anthropic Messages API: converted to a chat completion, then the same path.
    messages = Messages(bridge)

    def check_messages(body: Any) -> None:
        if len(body.messages) > limits.max_messages:
            raise InvalidRequest(f"At most {limits.max_messages} messages are allowed.", param="messages")

    @app.post("/v1/messages", response_model=None)
    async def anthropic_messages(body: MessagesRequest, request: Request,  # type: ignore[valid-type]
                                 built: frozenset[str] = Depends(check_grammars)) -> Response:
        check_messages(body)
        return await generate(await messages.to_chat(body), request, messages.generate, built, messages.dialect)

    @app.post("/v1/messages/count_tokens")
    async def anthropic_count_tokens(body: CountTokensRequest, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
        check_messages(body)
        resolve_model(body, request_context(request.scope).policy)
        return await messages.count_tokens(body, request)

    # The Responses API: vLLM's layer, our store for previous_response_id, the same path.
    responses = Responses(bridge, store, ResponsesRequest, limits.max_request_bytes)

    @app.post("/v1/responses", response_model=None)
    async def create_response(body: ResponsesRequest, request: Request,  # type: ignore[valid-type]
                              built: frozenset[str] = Depends(check_grammars)) -> Response:
        prepared, call = await responses.prepare(body, request_context(request.scope).tenant)
        return await generate(prepared, request, call, built, responses.dialect)

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str, request: Request) -> dict[str, Any]:
        return (await responses.find(response_id, request_context(request.scope).tenant))["response"]  # type: ignore[no-any-return]

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
        await responses.find(response_id, request_context(request.scope).tenant)
        await responses.store.delete(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": served}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        policy = request_context(request.scope).policy
        names = [name for name in [served, *sorted(aliases)] if visible(policy, name)]
        return {"object": "list", "data": [model_card(name) for name in names]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        if model_id != served and model_id not in aliases or not visible(request_context(request.scope).policy,
                                                                          model_id):
            raise ModelNotFound(f"The model '{model_id}' does not exist or you do not have access to it.",
                                param="model")
        return model_card(model_id)

    # The tokenizer of the engine, without an engine slot (nothing is generated): still
    # behind keys, rate limits and the body limit, like every route.
    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
        resolve_model(body, request_context(request.scope).policy)
        messages = declared(body, "messages")
        if messages is not None and len(messages) > limits.max_messages:
            raise InvalidRequest(f"At most {limits.max_messages} messages are allowed.", param="messages")
        return (await bridge.tokenize(body, request)).model_dump()  # type: ignore[no-any-return]

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
        resolve_model(body, request_context(request.scope).policy)
        return (await bridge.detokenize(body, request)).model_dump()  # type: ignore[no-any-return]

    if usage_report is not None:

        @app.get("/admin/usage")
        async def admin_usage() -> dict[str, Any]:
            return await usage_report()

    if debug_info is not None:

        @app.get("/debug/runtime")
        async def debug_runtime() -> dict[str, Any]:
            return debug_info()

    install_error_handlers(app)
    return app


def install_error_handlers(app: FastAPI) -> None:
    def respond(request: Request, error: ServiceError) -> Response:
        # Sent in the dialect the route table gives the request's path, and recorded as it goes.
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
