"""components/api/openai_app.py as FastAPI reads it (no engine): the grammar guard's keys
reach every generation route as a dependency, never as a parameter a client sends."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from components.api.openai_app import build_openai_app
from components.core.settings import ApiSettings


def test_no_route_takes_a_parameter_the_service_fills_in() -> None:
    bridge: Any = SimpleNamespace(served_name="m", chat=None, completion=None)
    app = build_openai_app(bridge, {}, ApiSettings(), gate=None,  # type: ignore[arg-type]
                           stall_timeout_s=1.0, store=None, grammar_tokenizer="unused")  # type: ignore[arg-type]
    schema = app.openapi()
    parameters = {(path, parameter["name"]) for path, methods in schema["paths"].items()
                  for operation in methods.values() for parameter in operation.get("parameters", [])}
    assert {path for path, name in parameters if name == "built"} == set()
    assert ("/v1/chat/completions", "built") not in parameters and "/v1/chat/completions" in schema["paths"]
