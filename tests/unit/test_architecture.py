"""The layering rules, read from the source: what each module may import, and where the
couplings to vLLM's and uvicorn's internals live."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

COMPONENTS = Path(__file__).resolve().parents[2] / "components"
# Core modules: everything else builds on them; they import nothing of ours.
CORE = {"settings", "errors", "context", "metrics", "logs", "host", "redact", "request_fields"}
# The modules that know vLLM: its engine (engine.py), its serving layer (the bridge and its
# exception table, vllm_errors.py) and its scheduler (engine_scheduler.py, loaded by vLLM in
# its engine core process).
VLLM_MODULES = {"engine", "vllm_bridge", "vllm_errors", "engine_scheduler"}
# The edge: what a request meets before any engine work; never the engine side.
EDGE = {"access_log", "auth", "middleware", "ratelimit", "health", "front_door", "context", "responses", "gateway",
        "keys", "keys_file", "ledger", "anthropic_errors", "response_store", "tracing", "replicas"}
ENGINE_SIDE = {"engine", "engine_spec", "vllm_bridge", "anthropic", "generation", "lifecycle", "admission", "runtime", "openai_app", "supervisor",
               "vllm_hooks", "validation", "responses_api", "interrupts", "engine_scheduler", "grammar_guard",
               "grammar_worker", "vllm_errors"}
UVICORN_INTERNALS = ("force_exit", "server_state", "handle_exit")
# The README's layers ("How it fits together"): a module imports from its own layer and below.
LAYERS = [
    CORE | {"responses", "bundled_model", "compile_cache", "settings_env"},
    EDGE | {"gpu_monitor", "bentoml_metrics"},
    {"admission", "breaker", "lifecycle", "generation", "engine_spec", "engine", "vllm_bridge", "openai_app",
     "vllm_hooks", "validation", "anthropic", "responses_api", "interrupts", "engine_scheduler", "grammar_guard",
     "grammar_worker", "vllm_errors"},
    {"runtime", "supervisor"},
]


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in COMPONENTS.glob("*.py") if path.stem != "__init__"}


def imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "components":
                found |= {f"components.{alias.name}" for alias in node.names}
    return found


def ours(tree: ast.Module) -> set[str]:
    return {name.split(".")[1] for name in imports(tree) if name.startswith("components.")}


def test_the_rules_name_real_modules_and_every_module_has_a_layer() -> None:
    names = set(modules())
    assert CORE | VLLM_MODULES | EDGE | ENGINE_SIDE <= names
    assert set().union(*LAYERS) == names


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    upward = sorted(f"{name} -> {other}" for name, tree in modules().items() for other in ours(tree)
                    if rank[other] > rank[name])
    assert upward == []


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_modules_import_nothing_of_ours(name: str) -> None:
    assert ours(modules()[name]) == set()


def test_vllm_is_imported_only_by_the_engine_facade_and_the_bridge() -> None:
    users = {name for name, tree in modules().items() if any(m.split(".")[0] == "vllm" for m in imports(tree))}
    assert users == VLLM_MODULES


def test_uvicorn_internals_only_in_the_supervisor() -> None:
    users = {path.stem for path in COMPONENTS.glob("*.py")
             if "import uvicorn" in path.read_text() or any(attr in path.read_text() for attr in UVICORN_INTERNALS)}
    assert users == {"supervisor"}


@pytest.mark.parametrize("name", sorted(EDGE))
def test_the_edge_never_imports_the_engine_side(name: str) -> None:
    assert ours(modules()[name]) & ENGINE_SIDE == set()


def test_scope_state_is_touched_only_by_the_context_module() -> None:
    offenders = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == "state" and name != "context":
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_no_module_is_long() -> None:
    lengths = {path.stem: len(path.read_text().splitlines()) for path in COMPONENTS.glob("*.py")}
    assert lengths["runtime"] <= 220
    assert {name: n for name, n in lengths.items() if n > 300} == {}


def test_the_environment_is_touched_only_by_the_settings_module() -> None:
    users = {path.stem for path in COMPONENTS.glob("*.py")
             if "os.environ" in path.read_text() or "getenv(" in path.read_text()}
    assert users == {"settings_env"}  # settings.py's groups read it through pydantic-settings
