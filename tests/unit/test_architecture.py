"""The layering rules, read from the source: the packages of components/ are the layers, what
each may import, and where the couplings to vLLM's and uvicorn's internals live."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

COMPONENTS = Path(__file__).resolve().parents[2] / "components"
# The packages, bottom up, and the packages each may import from (besides itself).
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),                      # settings, errors, context, metrics: import nothing of ours
    "storage": {"core"},                # the state replicas share: one pool and one guarded call per URI
    "edge": {"core", "storage"},        # what a request meets before any engine work
    "vllm_adapter": {"core"},           # everything that knows vLLM
    "serving": {"core", "edge", "vllm_adapter", "storage"},  # a request's way from validation to its last byte
    "api": {"core", "edge", "vllm_adapter", "serving", "storage"},  # the OpenAI, Anthropic and Responses dialects
    "app": {"core", "edge", "vllm_adapter", "serving", "api", "storage"},  # assembly: runtime, supervisor
}
UVICORN_INTERNALS = ("force_exit", "server_state", "handle_exit")


def sources() -> dict[str, Path]:
    """Every module as "package.module" -> its file."""
    return {f"{path.parent.name}.{path.stem}": path for path in COMPONENTS.glob("*/*.py") if path.stem != "__init__"}


def modules() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text()) for name, path in sources().items()}


def imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module.startswith("components."):
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def ours(tree: ast.Module) -> set[str]:
    """The packages of ours a module imports from."""
    return {name.split(".")[1] for name in imports(tree) if name.startswith("components.")}


def test_every_module_lives_in_a_layer_package() -> None:
    assert {path.parent.name for path in COMPONENTS.glob("*/*.py")} == set(MAY_IMPORT)
    assert [path.name for path in COMPONENTS.glob("*.py")] == ["__init__.py"]


def test_no_package_imports_from_one_it_may_not() -> None:
    wrong = sorted(f"{name} -> {other}" for name, tree in modules().items() for other in ours(tree)
                   if other != name.split(".")[0] and other not in MAY_IMPORT[name.split(".")[0]])
    assert wrong == []


def test_core_modules_import_nothing_of_ours() -> None:
    assert {name: ours(tree) - {"core"} for name, tree in modules().items() if name.startswith("core.")} == {
        name: set() for name in modules() if name.startswith("core.")}


def test_vllm_is_imported_only_by_the_adapter() -> None:
    users = {name for name, tree in modules().items() if any(m.split(".")[0] == "vllm" for m in imports(tree))}
    assert users and {name.split(".")[0] for name in users} == {"vllm_adapter"}


def test_uvicorn_internals_only_in_the_supervisor() -> None:
    users = {name for name, path in sources().items()
             if "import uvicorn" in path.read_text() or any(attr in path.read_text() for attr in UVICORN_INTERNALS)}
    assert users == {"app.supervisor"}


def test_scope_state_is_touched_only_by_the_context_module() -> None:
    offenders = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == "state" and name != "core.context":
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_no_module_is_long() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in sources().items()}
    assert {name: n for name, n in lengths.items() if n > 300} == {}


def test_the_environment_is_touched_only_by_the_settings_module() -> None:
    users = {name for name, path in sources().items()
             if "os.environ" in path.read_text() or "getenv(" in path.read_text()}
    assert users == {"core.settings_env"}  # settings.py's groups read it through pydantic-settings


def test_memory_or_redis_is_chosen_only_by_the_storage_package() -> None:
    """A storage URI's scheme is read in one place (storage.backend); every user takes the
    Storage it chose. (core.settings holds the default and validates the scheme.)"""
    users = {name for name, path in sources().items() if "memory://" in path.read_text()}
    assert users <= {"storage.backend", "core.settings"}


def test_redis_is_reached_only_through_the_storage_package() -> None:
    """One client per external store, with one guarded call (STYLE.md, 18)."""
    users = {name for name, tree in modules().items() if any(m.split(".")[0] == "redis" for m in imports(tree))}
    assert {name.split(".")[0] for name in users} == {"storage"}


def test_the_adapters_side_channels_and_vllms_privates_stay_in_the_adapter() -> None:
    """Outside components/vllm_adapter/ no module imports one of its ContextVars (the rest of
    the service hands its facts to the bridge as an EngineCall), and none names a private
    (`_`) attribute of vLLM's: the ones the adapter lists (internals.USED) or any other the
    modules it reaches define, in attribute access or as a string (getattr)."""
    import importlib.util

    from components.vllm_adapter.internals import USED

    trees = modules()

    def context_vars_of(tree: ast.Module) -> set[str]:
        """The module-level names bound to a ContextVar (by annotation or by value)."""
        found = set()
        for node in tree.body:
            if isinstance(node, ast.AnnAssign | ast.Assign) and "ContextVar" in ast.unparse(node):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found |= {target.id for target in targets if isinstance(target, ast.Name)}
        return found

    context_vars = {f"components.{name}": context_vars_of(tree) for name, tree in trees.items()
                    if name.startswith("vllm_adapter.")}
    root = Path(importlib.util.find_spec("vllm").origin).parent  # type: ignore[union-attr, arg-type]

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    def defined(tree: ast.AST) -> set[str]:
        return {node.name if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) else node.attr
                for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                or isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)}

    vllm_files = {root.joinpath(*entry.module.split(".")[1:]) for entry in USED}
    vllm_names = {entry.name for entry in USED if private(entry.name)}
    for base in vllm_files:
        path = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        vllm_names |= {name for name in defined(ast.parse(path.read_text())) if private(name)}
    ours = set().union(*(defined(tree) for tree in trees.values()))
    forbidden = vllm_names - ours | {entry.name for entry in USED if private(entry.name)}
    offenders = []
    for name, tree in trees.items():
        if name.startswith("vllm_adapter."):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in context_vars:
                offenders += [f"{name} imports {node.module}.{alias.name}" for alias in node.names
                              if alias.name in context_vars[node.module]]
            elif isinstance(node, ast.Attribute) and node.attr in forbidden:
                offenders.append(f"{name}:{node.lineno} names vLLM's {node.attr}")
            elif isinstance(node, ast.Constant) and node.value in forbidden:
                offenders.append(f"{name}:{node.lineno} names vLLM's {node.value}")
    assert any(context_vars.values())  # the adapter's own are found
    assert offenders == []
