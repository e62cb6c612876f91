"""The error sender (components/core/responses.py): it renders the error in the route's
dialect and records the error's type in the request context itself; nothing else sets it."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path
from typing import Any

from components.core import errors
from components.core.context import request_context
from components.core.responses import ErrorResponse, send_error

COMPONENTS = Path(__file__).resolve().parents[2] / "components"


def scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": [], "state": {}}


def run(app: Any, path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    request = scope(path)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(request, receive, send))
    return request, sent


def test_send_error_speaks_the_routes_dialect_and_records_the_type() -> None:
    error = errors.RateLimited("Rate limit exceeded.", headers={"retry-after": "1"})

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        await send_error(scope, send, error, [(b"connection", b"close")])

    request, (start, body) = run(refuse, "/v1/messages")
    assert start["status"] == 429
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close"
    assert headers[b"content-length"] == str(len(body["body"])).encode()
    assert json.loads(body["body"]) == {"type": "error",
                                        "error": {"type": "rate_limit_error", "message": "Rate limit exceeded."}}
    assert request_context(request).error_type == "rate_limit_exceeded"

    request, (start, body) = run(refuse, "/v1/chat/completions")
    assert json.loads(body["body"])["error"]["code"] == "rate_limit_exceeded"


def test_an_error_without_a_code_is_recorded_by_its_type() -> None:
    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        await send_error(scope, send, errors.InvalidRequest("bad"))

    request, _ = run(refuse, "/v1/completions")
    assert request_context(request).error_type == "invalid_request_error"


def test_the_app_error_response_is_the_same_sender() -> None:
    request, (start, body) = run(ErrorResponse(errors.ModelNotFound("none", param="model")), "/v1/messages")
    assert start["status"] == 404 and json.loads(body["body"])["error"]["type"] == "not_found_error"
    assert request_context(request).error_type == "model_not_found"
    request, (start, body) = run(ErrorResponse(errors.ModelNotFound("none", param="model")), "/v1/models/x")
    assert json.loads(body["body"])["error"] == {"message": "none", "type": "invalid_request_error",
                                                 "param": "model", "code": "model_not_found"}


def test_error_type_is_set_only_where_errors_are_recorded() -> None:
    """No module sets `error_type` by hand next to an error it sends: the context records it
    (`RequestContext.record_error`), called by whatever sends the error."""
    setters = []
    for path in sorted(COMPONENTS.glob("*/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AugAssign | ast.AnnAssign) else []
            if any(isinstance(t, ast.Attribute) and t.attr == "error_type" for t in targets):
                setters.append(f"{path.relative_to(COMPONENTS)}:{node.lineno}")
    assert [setter.split(":")[0] for setter in setters] == ["core/context.py"], setters
