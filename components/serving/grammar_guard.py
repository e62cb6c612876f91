"""Structured-output grammars are built and compiled first off the event loop, under a time limit.

vLLM 0.32 builds a request's grammar (xgrammar's `Grammar.from_json_schema`, `from_regex`,
`from_ebnf`, structural tags) while it validates the request: in the request model's
validators and in `InputProcessor.process_inputs`, synchronously, on the API event loop.
A JSON-schema `pattern` has no limit there: `.{5000}` takes seconds, `.{20000}` minutes,
and meanwhile nothing else on the loop (probes included) is answered. Before the body is
validated, the guard builds every grammar the body carries in a worker process, under
GRAMMAR_TIMEOUT_SECONDS; past it the worker is killed (a thread cannot be stopped, and the
build would go on burning a core) and the request gets a 400 naming the field. What it
built in time, it returns as keys; the route hands them to the adapter (for vLLM's request
models, and with the engine call), and vLLM's validation skips those builds instead of
repeating them on the loop (components/vllm_adapter/grammar_reuse.py).

A build bounds only half the cost: the engine core then compiles the grammar against the
model's vocabulary (xgrammar's GrammarCompiler, in its thread pool), with no limit: the
48-byte pattern `(.{1,30}){1,30}` builds in 0.03 s and compiles for minutes, a core per
request, and the compile goes on after an abort. So the worker compiles each grammar too,
the way vLLM 0.32's XgrammarBackend does (the same compiler class and options, the served
model's tokenizer and vocabulary size), inside the same limit: the engine's own compile of
a grammar that passed takes about as long, and that is its bound. A grammar that builds
but does not compile (with vLLM's compiler cache on, xgrammar fails on long repeats such as
`.{300}`) is a 400 `invalid_grammar` naming the field, instead of the engine failing the
request (which vLLM answers with a 500).
The keys are the request's own: they name this request's grammars only, are gone with the
request, and no other request (or tenant) can add to them or evict from them.

The fields read are a superset of what vLLM may compile, whatever the route: a grammar
that cannot be built in time is refused even where it would not have been used. A grammar
that does not build is left to vLLM, whose messages the API already maps.

The worker process is components/vllm_adapter/grammar_worker.py."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.errors import InvalidRequest, Overloaded
from components.vllm_adapter.grammar_reuse import grammar_key

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2  # concurrent builds; each worker: a Python process, xgrammar, a tokenizer (~550 MB)
START_TIMEOUT_S = 300.0  # xgrammar (torch) and the tokenizer load in ~12 s on a busy 2-core host


@dataclass(frozen=True)
class Spec:
    """One grammar a request carries: the field it came from, its kind, its source text."""

    param: str
    kind: str  # "json" (a JSON schema), "regex" or "grammar" (EBNF or Lark)
    source: str


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _tag_specs(param: str, tag: Any) -> Iterator[Spec]:
    """The schemas, patterns and grammars inside a structural tag, in either of vLLM's
    formats (legacy `structures[].schema`, or nested `format` objects)."""
    if isinstance(tag, str):
        try:
            tag = json.loads(tag)
        except ValueError:
            return  # vLLM refuses it as malformed, without building anything
    if isinstance(tag, list):
        for item in tag:
            yield from _tag_specs(param, item)
    elif isinstance(tag, dict):
        kind = tag.get("type")
        if kind == "json_schema" and isinstance(tag.get("json_schema"), dict | bool):
            yield Spec(param, "json", _text(tag["json_schema"]))
        elif kind == "regex" and isinstance(tag.get("pattern"), str):
            yield Spec(param, "regex", tag["pattern"])
        elif kind == "grammar" and isinstance(tag.get("grammar"), str):
            yield Spec(param, "grammar", tag["grammar"])
        if isinstance(tag.get("schema"), dict) and "begin" in tag:  # a legacy structure
            yield Spec(param, "json", _text(tag["schema"]))
        for key, value in tag.items():
            if isinstance(value, dict | list) and key not in ("json_schema", "schema"):
                yield from _tag_specs(param, value)


def grammar_specs(body: Any) -> list[Spec]:
    """Every grammar a request body of any route carries (OpenAI chat and completions,
    Responses, Anthropic Messages), with the field to name when it cannot be built."""
    if not isinstance(body, dict):
        return []
    specs: list[Spec] = []
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_schema":
            inner = response_format.get("json_schema")
            if isinstance(inner, dict) and inner.get("schema") is not None:
                specs.append(Spec("response_format", "json", _text(inner["schema"])))
        elif response_format.get("type") == "structural_tag":
            specs.extend(_tag_specs("response_format", response_format))
    outputs = body.get("structured_outputs")
    if isinstance(outputs, dict):
        if outputs.get("json") is not None:
            specs.append(Spec("structured_outputs", "json", _text(outputs["json"])))
        for kind in ("regex", "grammar"):
            if isinstance(outputs.get(kind), str):
                specs.append(Spec("structured_outputs", kind, outputs[kind]))
        if outputs.get("structural_tag") is not None:
            specs.extend(_tag_specs("structured_outputs", outputs["structural_tag"]))
    text = body.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        if text["format"].get("schema") is not None:
            specs.append(Spec("text.format", "json", _text(text["format"]["schema"])))
    output_config = body.get("output_config")
    if isinstance(output_config, dict) and isinstance(output_config.get("format"), dict):
        if output_config["format"].get("schema") is not None:
            specs.append(Spec("output_config", "json", _text(output_config["format"]["schema"])))
    tools = body.get("tools")
    # A forced tool call turns the tool's parameters into a JSON-schema grammar.
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        for holder, key in ((function, "parameters"), (tool, "parameters"), (tool, "input_schema")):
            if isinstance(holder, dict) and isinstance(holder.get(key), dict):
                specs.append(Spec("tools", "json", _text(holder[key])))
    return specs


class _Worker:
    """One worker process, started by us and killed by its PID when a build overruns."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        if process.stdin is None or process.stdout is None:
            raise RuntimeError("the grammar worker was started without its pipes")
        self.process = process
        self.stdin, self.stdout = process.stdin, process.stdout

    @classmethod
    async def start(cls, tokenizer: str) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "components.vllm_adapter.grammar_worker", tokenizer,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            cwd=ROOT,
        )
        worker = cls(process)
        try:
            if await asyncio.wait_for(worker._line(), START_TIMEOUT_S) != "ready":
                raise RuntimeError("the grammar worker did not start")
        except BaseException:
            await worker.kill()
            raise
        return worker

    async def _line(self) -> str:
        line = await self.stdout.readline()
        if not line:
            raise RuntimeError("the grammar worker exited")
        return line.decode().strip()

    async def build(self, specs: list[Spec], started: list[int]) -> tuple[list[tuple[int, str]], int | None]:
        """Until "done": the index and builder kind of each grammar built, and the index of
        the one that failed to compile, if any; `started` holds the index of the grammar
        being built."""
        self.stdin.write(json.dumps([[spec.kind, spec.source] for spec in specs]).encode() + b"\n")
        await self.stdin.drain()
        built: list[tuple[int, str]] = []
        failed: int | None = None
        while (line := await self._line()) != "done":
            if line.startswith("+"):
                built.append((started[-1], line[1:]))
            elif line == "!":
                failed = started[-1]
            else:
                started.append(int(line))
        return built, failed

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


class GrammarGuard:
    """Builds and compiles a request's grammars in worker processes, for the model whose
    tokenizer (a path or hub name, as the engine loads it) is `tokenizer`, within
    `timeout_s`. At most WORKERS run at once; a request that finds none free within the
    limit gets a 503 (admission never waits without bound)."""

    def __init__(self, timeout_s: float, tokenizer: str, workers: int = WORKERS) -> None:
        self.timeout_s = timeout_s
        self.tokenizer = tokenizer
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []

    async def check(self, specs: list[Spec]) -> frozenset[str]:
        """Build and compile `specs` within the limit, or refuse the request; the keys
        (`grammar_key`) of the builds that succeeded."""
        if not specs:
            return frozenset()
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
        except TimeoutError:
            raise Overloaded("Too many structured-output grammars are being built; retry shortly.",
                             headers={"retry-after": str(max(1, round(self.timeout_s)))}) from None
        try:
            built = await self._build(specs)
        finally:
            self._slots.release()
        keys = (grammar_key(kind, specs[index].source) for index, kind in built)
        return frozenset(key for key in keys if key is not None)

    async def _build(self, specs: list[Spec]) -> list[tuple[int, str]]:
        worker = self._idle.pop() if self._idle else await _Worker.start(self.tokenizer)
        started: list[int] = []
        try:
            built, failed = await asyncio.wait_for(worker.build(specs, started), self.timeout_s)
        except TimeoutError:
            await worker.kill()
            spec = specs[started[-1] if started else 0]
            logger.warning("grammar build from %s stopped after %.1f s", spec.param, self.timeout_s)
            raise InvalidRequest(
                f"{spec.param}: the structured-output grammar could not be compiled within "
                f"{self.timeout_s:g} s; simplify the schema or pattern.",
                param=spec.param, code="grammar_too_complex",
            ) from None
        except BaseException:  # a dead worker, or the request cancelled mid-build
            await worker.kill()
            raise
        self._idle.append(worker)
        if failed is not None:
            # xgrammar's message names its own source files and internals: not the client's.
            param = specs[failed].param
            raise InvalidRequest(
                f"{param}: the structured-output grammar cannot be compiled for this model "
                "(long repeats such as `.{300}` are not supported); simplify the schema or pattern.",
                param=param, code="invalid_grammar",
            )
        return built

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().kill()
