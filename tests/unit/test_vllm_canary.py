"""Canary against the installed vLLM: every internal name the adapter relies on
(components/vllm_adapter/internals.py) is there, as the adapter uses it; and the list is
the code's: the adapter reaches no vLLM private name, and overrides or reads nothing of
vLLM's scheduler, except through it."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from components.vllm_adapter import internals
from components.vllm_adapter.canary import problems
from components.vllm_adapter.internals import USED, Internal

ADAPTER = Path(__file__).resolve().parents[2] / "components" / "vllm_adapter"


@pytest.fixture(scope="module")
def found() -> list[str]:
    return problems(USED)


def test_every_internal_the_adapter_uses_is_in_the_installed_vllm(found: list[str]) -> None:
    import vllm

    assert found == [], f"vLLM {vllm.__version__} lacks what the adapter uses:\n" + "\n".join(found)


def test_the_check_names_an_internal_that_vllm_renamed(found: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """What an upgrade that renames each kind of entry looks like: gone from its module,
    from its class, from what a function assigns, or with its parameters renamed."""
    from vllm.entrypoints.anthropic.serving import AnthropicServingMessages
    from vllm.entrypoints.openai.chat_completion import serving as chat_serving
    from vllm.v1.core.sched.scheduler import Scheduler

    assert found == []
    monkeypatch.delattr(AnthropicServingMessages, "_get_disabled_thinking_effort")
    monkeypatch.delattr(chat_serving, "get_max_tokens")
    monkeypatch.delattr(Scheduler, "schedule")

    def renamed(self: object, prompt_tokens: object) -> int:
        return 0

    monkeypatch.setattr("vllm.entrypoints.serve.engine.serving.BaseServing._extract_prompt_len", renamed)
    now = problems(USED)
    assert [line.split(" ")[0] for line in now] == [
        f"{chat_serving.__name__}.get_max_tokens",
        "vllm.entrypoints.serve.engine.serving.BaseServing._extract_prompt_len",
        "vllm.entrypoints.anthropic.serving.AnthropicServingMessages._get_disabled_thinking_effort",
        "vllm.v1.core.sched.scheduler.Scheduler.schedule",
    ]
    assert "expected parameters ('prompt',)" in now[1]


def test_the_check_names_an_entry_that_does_not_match_vllm() -> None:
    """An entry edited by hand into a name vLLM does not have fails, whatever its kind."""
    wrong = [
        dataclasses.replace(internals.REQUEST_STATE[0], path="Request.sampling_parms"),
        dataclasses.replace(internals.GET_MAX_TOKENS[0], params=("max_model_len", "input_length", "max_tokens")),
        Internal(internals.STATE_NAMES[0].module, "init_generate_state.openai_serving_chatt", "assigned"),
        Internal("vllm.v1.core.sched.scheduler", "Schedular", "subclassed"),
    ]
    assert len(problems(wrong)) == len(wrong)


def test_patches_are_applied_from_the_list() -> None:
    """The hooks replace what the list names, so the list cannot drift from what is patched."""
    from vllm.entrypoints.openai.chat_completion import serving as chat_serving

    from components.vllm_adapter.vllm_hooks import install_context_check

    original = chat_serving.get_max_tokens
    try:
        install_context_check(internals.GET_MAX_TOKENS[:1])
        assert chat_serving.get_max_tokens.__wrapped__ is original
    finally:
        chat_serving.get_max_tokens = original


def _trees() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in ADAPTER.glob("*.py")}


def test_the_adapter_reaches_no_private_name_but_through_the_list() -> None:
    """A `_name` read on any object but our own `self`: a vLLM private called directly,
    outside internals.USED (which the adapter calls through `Internal.on`)."""
    reached = [f"{module}:{node.lineno} {ast.unparse(node)}" for module, tree in _trees().items()
               for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
               and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]
    assert reached == []


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == name)


def test_what_the_scheduler_overrides_and_reads_is_listed() -> None:
    from vllm.v1.core.sched.scheduler import Scheduler

    tree = _trees()["engine_scheduler"]
    ours = _class(tree, "ClassFirstScheduler")
    own = {node.name for node in ours.body if isinstance(node, ast.FunctionDef)}
    own |= {target.id for node in ours.body if isinstance(node, ast.Assign | ast.AnnAssign)
            for target in ([node.target] if isinstance(node, ast.AnnAssign) else node.targets)
            if isinstance(target, ast.Name)}
    assert {name for name in own if hasattr(Scheduler, name)} == {internals.SCHEDULE.name}
    read = {node.attr for node in ast.walk(ours) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "self"} - own
    assert read == {entry.name for entry in internals.SCHEDULER_STATE}
    on_requests = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                   and isinstance(node.value, ast.Name) and node.value.id in ("request", "upcoming")}
    assert on_requests == {entry.name for entry in internals.REQUEST_STATE}


def test_the_overridden_stat_logger_method_is_listed() -> None:
    tree = _trees()["engine"]
    logger_class = _class(tree, "WaitingIncludesQueue")
    overridden = {node.name for node in logger_class.body if isinstance(node, ast.FunctionDef)}
    assert overridden == {entry.name for entry in internals.STAT_LOGGER if entry.use == "overridden"}
