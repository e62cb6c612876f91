"""vLLM's grammar validation, with the builds the grammar guard already made for this
request skipped (components/serving/grammar_guard.py builds them off the loop, under a time
limit). Names patched: components/vllm_adapter/internals.py. Imports nothing of vLLM's."""

from __future__ import annotations

import hashlib
import json
import types
from typing import Any

from components.vllm_adapter import call_scope
from components.vllm_adapter.internals import VALIDATE_GRAMMAR, XGRAMMAR_GLOBAL, patch

# xgrammar's builders that vLLM 0.32's `validate_xgrammar_grammar` calls, by the kind of
# source each takes (the guard's worker names its builds the same way).
_BUILDERS = {"from_json_schema": "json", "from_regex": "regex", "from_ebnf": "ebnf", "from_lark": "lark"}


def grammar_key(kind: str, source: Any) -> str | None:
    """The key of one xgrammar build: its builder's kind and its exact source (a JSON
    schema as compact JSON, keys in their order: the build depends on that order). None
    for a source that is not one such build can take."""
    if kind == "json":
        try:
            source = json.dumps(json.loads(source) if isinstance(source, str) else source, separators=(",", ":"))
        except (TypeError, ValueError):
            return None
    elif not isinstance(source, str):
        return None
    return hashlib.sha256(f"{kind}\0{source}".encode()).hexdigest()


class _Grammar:
    """xgrammar's `Grammar` as vLLM's validation sees it: a build that the guard already
    completed for this request returns at once (validation discards what a build returns),
    every other attribute and build is xgrammar's own."""

    def __init__(self, grammar: Any) -> None:
        self._grammar = grammar

    def __getattr__(self, name: str) -> Any:
        original = getattr(self._grammar, name)
        kind = _BUILDERS.get(name)
        if kind is None:
            return original
        # Read here, on the caller's thread: vLLM runs the regex build in a thread of its own,
        # which does not carry the request's context.
        built = call_scope.built_grammars()

        def build(source: Any, *args: Any, **kwargs: Any) -> Any:
            if not args and not kwargs and grammar_key(kind, source) in built:
                return None
            return original(source, *args, **kwargs)

        return build


class _Xgrammar:
    def __init__(self, module: Any) -> None:
        self._module = module
        self.Grammar = _Grammar(module.Grammar)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _reusing(original: types.FunctionType) -> types.FunctionType:
    names = dict(original.__globals__)
    names[XGRAMMAR_GLOBAL.name] = _Xgrammar(names[XGRAMMAR_GLOBAL.name])
    validate = types.FunctionType(original.__code__, names, original.__name__, original.__defaults__,
                                  original.__closure__)
    validate.__kwdefaults__ = original.__kwdefaults__
    validate.__doc__ = original.__doc__
    return validate


def install_grammar_reuse(backend_xgrammar: Any = None) -> None:
    """vLLM 0.32 validates a request's grammar by building it with xgrammar, synchronously
    on the API event loop, in `validate_xgrammar_grammar` (called by
    `SamplingParams._validate_structured_outputs` from `InputProcessor.process_inputs` for
    the xgrammar and `auto` backends, and by the request models' structural-tag
    validators; each imports it from its module at call time). The guard has already built
    this request's grammars off the loop under the time limit, with the same builders and
    default options: the same function runs, with its own code and checks (nesting depth,
    features xgrammar lacks, NUL bytes, `choice` rewritten to a grammar, its errors), and
    only the builds the guard completed for this request are skipped. Any other build
    (another backend, a source vLLM rewrote) is vLLM's own, as before. `backend_xgrammar`:
    the module to patch (default: vLLM's own)."""
    patch(VALIDATE_GRAMMAR, _reusing, target=backend_xgrammar)
