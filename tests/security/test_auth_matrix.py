"""Every route the running app exposes (enumerated from the app itself: our OpenAPI schema
and BentoML's own routes), without a key, with a wrong key, with a good key."""

from __future__ import annotations

import httpx
import pytest

from components.core.routes import public_paths
from tests.security.conftest import KEY

OPEN = public_paths(protect_metrics=False)


def bentoml_routes() -> list[tuple[str, str]]:
    from _bentoml_impl.server.app import ServiceAppFactory

    import service

    service.LLMService.inject_config()
    app = ServiceAppFactory(service.LLMService, is_main=True)()
    routes = []
    for route in app.routes:
        path = getattr(route, "path", "")
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD" and path and "{" not in path:
                routes.append((method, path or "/"))
    return routes


def all_routes(server) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    ours = [(method.upper(), path.replace("{model_id}", "gpt-4").replace("{response_id}", "resp_0"))
            for path, item in schema["paths"].items() for method in item]
    return sorted(set(ours) | set(bentoml_routes()))


def call(server, method: str, path: str, headers: dict[str, str]) -> httpx.Response:  # type: ignore[no-untyped-def]
    body = {"json": {}} if method == "POST" else {}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30, **body)


def test_routes_are_enumerated(server) -> None:  # type: ignore[no-untyped-def]
    routes = all_routes(server)
    paths = {path for _, path in routes}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/debug/runtime", "/livez", "/readyz", "/metrics",
            "/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/v1/responses/resp_0"} <= paths


def refusal(path: str, response: httpx.Response) -> str:
    """The error's code; on the Anthropic routes, whose errors take Anthropic's shape."""
    error = response.json()["error"]
    if path.startswith("/v1/messages"):
        assert response.json()["type"] == "error"
        return "invalid_api_key" if error["type"] == "authentication_error" else error["type"]
    return str(error["code"])


@pytest.mark.parametrize("credentials", ["none", "wrong", "good"])
def test_auth_matrix(server, credentials: str) -> None:  # type: ignore[no-untyped-def]
    headers = {"none": {}, "wrong": {"authorization": "Bearer sk-wrong-000"}, "good": {"authorization": f"Bearer {KEY}"}}
    failures = []
    for method, path in all_routes(server):
        response = call(server, method, path, headers[credentials])
        if credentials == "good" or path in OPEN:
            if response.status_code == 401:
                failures.append((method, path, response.status_code))
        elif response.status_code != 401 or refusal(path, response) != "invalid_api_key":
            failures.append((method, path, response.status_code))
        assert response.status_code < 500 or path == "/readyz", (method, path, response.status_code)
    assert not failures, failures
