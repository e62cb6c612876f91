"""The grammar guard's worker process (components/serving/grammar_guard.py): builds and compiles
structured-output grammars as vLLM 0.32 does, so that the guard can kill it past the limit.

Run as `python -m components.vllm_adapter.grammar_worker TOKENIZER`: it loads the tokenizer once, then
takes one job per line on stdin (a JSON list of [kind, payload]); it answers "ready" once,
then the index of each grammar as it starts it, "+" and the builder's kind after each build
that succeeded, "!" where that grammar then failed to compile (the job's last), and "done"
after the last, so an error names its field."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

# vLLM 0.32's XgrammarBackend compiler options; the cache is on there, and with it xgrammar
# fails on grammars it compiles without (long repeats), so it is on here too.
# Never more threads than cores: the API's event loop shares them (a compile is no faster
# with more threads than cores, so the bound on the engine's own compile holds).
COMPILER_THREADS = min(8, os.cpu_count() or 1)
COMPILER_CACHE_BYTES = 512 * 1024 * 1024  # VLLM_XGRAMMAR_CACHE_MB's default


def _build(xgr: Any, kind: str, source: str) -> str:
    """Build as vLLM's validation does (the same builder, default options); the builder's
    kind, for `grammar_key`."""
    if kind == "json":
        xgr.Grammar.from_json_schema(source)
        return "json"
    if kind == "regex":
        xgr.Grammar.from_regex(source)
        return "regex"
    try:
        xgr.Grammar.from_ebnf(source)
        return "ebnf"
    except Exception:  # noqa: BLE001 - vLLM reads Lark where the text looks like Lark
        xgr.Grammar.from_lark(source)
        return "lark"


def _compile(compiler: Any, kind: str, source: str) -> None:
    """Compile as vLLM's XgrammarBackend.compile_grammar does, by the builder's kind (vLLM
    picks Lark where the text has no `::=` rule, which is where the EBNF build failed)."""
    if kind == "json":
        # vLLM's options where `disable_any_whitespace` is off, as the engine runs here.
        compiler.compile_json_schema(source, any_whitespace=True, separators=None)
    elif kind == "regex":
        compiler.compile_regex(source)
    elif kind == "lark":
        compiler.compile_lark(source)
    else:
        compiler.compile_grammar(source)


def load_compiler(xgr: Any, tokenizer: str) -> Any:
    """The compiler vLLM's engine builds for the model: its tokenizer, and the vocabulary
    size from the model's config (`ModelConfig.get_vocab_size`), which may exceed the
    tokenizer's (padded embeddings)."""
    from transformers import AutoConfig, AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    vocab_size = AutoConfig.from_pretrained(tokenizer).get_text_config().vocab_size
    info = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size)
    return xgr.GrammarCompiler(info, max_threads=COMPILER_THREADS, cache_enabled=True,
                               cache_limit_bytes=COMPILER_CACHE_BYTES)


def serve(jobs: TextIO, answers: TextIO, tokenizer: str) -> None:
    import xgrammar as xgr

    compiler = load_compiler(xgr, tokenizer)
    answers.write("ready\n")
    answers.flush()
    for line in jobs:
        for index, (kind, source) in enumerate(json.loads(line)):
            answers.write(f"{index}\n")
            answers.flush()
            try:
                built = _build(xgr, kind, source)
            except Exception:  # noqa: BLE001, S112 - vLLM refuses it, in its own words
                continue
            answers.write(f"+{built}\n")
            answers.flush()
            try:
                _compile(compiler, built, source)
            except Exception:  # noqa: BLE001 - the engine would fail the request: a 400 here
                answers.write("!\n")
                break
        answers.write("done\n")
        answers.flush()


if __name__ == "__main__":
    # Only the protocol goes to the parent: whatever a library prints goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    serve(sys.stdin, protocol, sys.argv[1])
