"""The route table (components/core/routes.py): what each path is, declared once. Read from
the source: no other module lists a route path, and every route the app registers is in it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from components.core import routes

COMPONENTS = Path(__file__).resolve().parents[2] / "components"
# The modules that register routes with FastAPI: their decorators keep their paths, and
# each such path must be one the table knows.
REGISTERING = {"api/openai_app.py", "api/anthropic.py", "api/responses_api.py"}
HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "api_route"}


def module_sources() -> dict[str, ast.Module]:
    return {str(path.relative_to(COMPONENTS)): ast.parse(path.read_text()) for path in COMPONENTS.glob("*/*.py")}


def looks_like_a_route(text: str) -> bool:
    """A string naming one of our routes, or anything under /v1/."""
    known = {route.path for route in routes.ROUTES}
    return text.startswith("/v1/") or text in known or any(
        text.startswith(path.rstrip("/") + "/") for path in known if len(path) > 1)


def registered_paths(tree: ast.Module) -> list[str]:
    """The paths a module hands FastAPI: `@app.post("/x")` and `docs_url="/docs"`-like keywords."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [call.args[0].value for call in node.decorator_list
                      if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                      and call.func.attr in HTTP_METHODS and call.args and isinstance(call.args[0], ast.Constant)
                      and isinstance(call.args[0].value, str)]
        if isinstance(node, ast.Call):
            found += [kw.value.value for kw in node.keywords if kw.arg in ("docs_url", "openapi_url", "redoc_url")
                      and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str)]
    return found


def test_no_module_but_the_table_lists_route_paths() -> None:
    offenders = []
    for name, tree in module_sources().items():
        if name == "core/routes.py" or name in REGISTERING:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and looks_like_a_route(node.value):
                offenders.append(f"{name}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_every_route_the_app_registers_is_in_the_table() -> None:
    sources = module_sources()
    registered = [path for name in REGISTERING for path in registered_paths(sources[name])]
    assert "/v1/chat/completions" in registered and "/docs" in registered  # the scan sees them
    missing = []
    for path in registered:
        if "{" in path:
            # `/v1/models/{model_id:path}`: a prefix route of the table covers it.
            prefix = path[:path.index("{")]
            if not any(route.prefix and route.path == prefix for route in routes.ROUTES):
                missing.append(path)
        elif routes.route(path) is routes.OTHER:
            missing.append(path)
    assert missing == []
    # openapi.json comes with FastAPI's defaults, the probes and /metrics with BentoML.
    for path in ("/openapi.json", "/livez", "/readyz", "/healthz", "/metrics"):
        assert routes.route(path) is not routes.OTHER


def test_public_and_admin_routes() -> None:
    open_paths = {"/livez", "/readyz", "/healthz", "/docs", "/openapi.json"}
    assert routes.public_paths(protect_metrics=True) == open_paths
    assert routes.public_paths(protect_metrics=False) == open_paths | {"/metrics"}
    assert routes.admin_paths(protect_metrics=False) == {"/debug/runtime", "/admin/usage"}
    assert routes.admin_paths(protect_metrics=True) == {"/debug/runtime", "/admin/usage", "/metrics"}
    # Everything else needs a key: an unknown path too.
    assert not routes.route("/v1/unknown").public(False) and not routes.route("/v1/unknown").admin(True)


@pytest.mark.parametrize(("path", "dialect"), [
    ("/v1/messages", "anthropic"), ("/v1/messages/count_tokens", "anthropic"), ("/v1/responses", "responses"),
    ("/v1/responses/resp_1", "responses"), ("/v1/chat/completions", "openai"), ("/metrics", "openai"),
    ("/nowhere", "openai"),
])
def test_each_route_speaks_one_dialect(path: str, dialect: str) -> None:
    assert routes.route(path).dialect == dialect


def test_probes_and_metrics_are_quiet_uncounted_and_untraced() -> None:
    for path in ("/livez", "/readyz", "/healthz", "/metrics"):
        route = routes.route(path)
        assert route.quiet and not route.counted and not route.traced
    for path in ("/v1/chat/completions", "/docs", "/nowhere", "/v1/models/x"):
        route = routes.route(path)
        assert not route.quiet and route.counted and route.traced
    assert {r.path for r in routes.ROUTES if r.generates} == {
        "/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"}


def test_labels_are_bounded() -> None:
    assert routes.endpoint_label("/v1/models/gpt-4") == "/v1/models/{id}"
    assert routes.endpoint_label("/v1/models/org/model") == "/v1/models/{id}"
    assert routes.endpoint_label("/v1/responses/resp_1") == "/v1/responses/{id}"
    assert routes.endpoint_label("/v1/chat/completions") == "/v1/chat/completions"
    assert routes.endpoint_label("/etc/" + "x" * 50) == "other"
    assert routes.LABELS == {route.label for route in routes.ROUTES} | {"other"}
    assert all(re.fullmatch(r"/[\w/.{}-]*|other", label) for label in routes.LABELS)
