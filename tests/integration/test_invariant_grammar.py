"""Invariant: a request's structured-output grammar never holds the event loop. Its
grammar is built off the loop under GRAMMAR_TIMEOUT_SECONDS; past it the request gets a
400 naming the field, and /livez keeps answering meanwhile; one built in time is not built
again on the loop by vLLM's own validation (issue #24, rule 7)."""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import httpx
import pytest

from components.core.settings import ApiSettings
from harness.server import Server

# A JSON-schema `pattern` whose grammar xgrammar (vLLM's default backend) builds in time
# quadratic in the count: `.{3000}` 6.5 s, `.{5000}` 9 s on an idle 2-core host, so this
# one takes many times the limit anywhere (above ~9,500 xgrammar stops expanding: instant).
PATHOLOGICAL = ".{8000}"
LIMIT_S = float(ApiSettings.model_fields["grammar_timeout_s"].default)


def schema(pattern: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"x": {"type": "string", "pattern": pattern}}, "required": ["x"]}


def routes(pattern: str) -> list[tuple[str, dict[str, Any], str]]:
    """(route, body, the field the error names): every route that carries a grammar."""
    return [
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
          "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema(pattern)}}},
         "response_format"),
        ("/v1/completions",
         {"prompt": "hi", "max_tokens": 4, "structured_outputs": {"json": schema(pattern)}},
         "structured_outputs"),
        ("/v1/responses",
         {"input": "hi", "max_output_tokens": 16,
          "text": {"format": {"type": "json_schema", "name": "x", "schema": schema(pattern)}}},
         "text.format"),
        ("/v1/messages",
         {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
          "output_config": {"format": {"type": "json_schema", "schema": schema(pattern)}}},
         "output_config"),
    ]


ROUTES = routes(PATHOLOGICAL)


class Prober:
    """Probes /livez back to back on its own connection, recording each probe's span."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.spans: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=600) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                status = client.get("/livez").status_code
                self.spans.append((start, time.monotonic(), status))
                time.sleep(0.02)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(600)


@pytest.mark.parametrize(("path", "body", "param"), ROUTES, ids=[route[0] for route in ROUTES])
def test_pathological_grammar_is_a_400_after_the_limit_and_livez_keeps_answering(
    server: Server, http: httpx.Client, served_model: str, path: str, body: dict[str, Any], param: str
) -> None:
    with Prober(server.url) as prober:
        time.sleep(0.2)  # the prober's connection is open before the request starts
        sent = time.monotonic()
        response = http.post(path, json={"model": served_model, **body}, timeout=600)
        answered = time.monotonic()
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if path == "/v1/messages":  # Anthropic's shape: {"type": "error", "error": {"type", "message"}}
        assert error["type"] == "invalid_request_error", error
        assert param in error["message"], error
    else:
        assert (error["code"], error["param"]) == ("grammar_too_complex", param), error
    # The server gave the grammar its whole limit before refusing it.
    assert answered - sent >= LIMIT_S
    # Probes that started and ended while the grammar was being built: the loop was free.
    # Several of them, each a small part of the limit (a blocked loop answers none until
    # the grammar is done, then one, as long as the whole build).
    during = [(start, end, status) for start, end, status in prober.spans if sent <= start and end <= answered]
    assert len(during) >= 3, prober.spans
    assert all(status == 200 for _, _, status in during), during
    assert max(end - start for start, end, _ in during) < LIMIT_S / 4, during


@pytest.fixture(scope="module")
def slow_pattern() -> tuple[str, float]:
    """A pattern that xgrammar builds, here and now, in about a quarter of the limit (in time
    for the guard's build and compile even on a busy host), and how long that build took in
    this process. Only a long repeat is slow to build within the body limit; none compiles
    with vLLM's compiler options, so the guard now refuses it (`invalid_grammar`) after
    building it in its worker: the loop must stay free all the same."""
    import xgrammar as xgr

    def build_s(count: int) -> float:
        start = time.monotonic()
        xgr.Grammar.from_json_schema(json.dumps(schema(f".{{{count}}}")))
        return time.monotonic() - start

    count = 1000
    for _ in range(3):  # the build time is quadratic in the count
        count = min(4000, max(200, int(count * math.sqrt(LIMIT_S / 4 / build_s(count)))))
    return f".{{{count}}}", build_s(count)


@pytest.mark.parametrize(("path", "body_for"), [(path, index) for index, (path, _, _) in enumerate(ROUTES)],
                         ids=[route[0] for route in ROUTES])
def test_a_grammar_built_in_time_is_not_built_again_on_the_loop(
    server: Server, http: httpx.Client, served_model: str, slow_pattern: tuple[str, float], path: str, body_for: int
) -> None:
    pattern, build_s = slow_pattern
    _, body, _ = routes(pattern)[body_for]
    with Prober(server.url) as prober:
        time.sleep(0.2)  # the prober's connection is open before the request starts
        sent = time.monotonic()
        response = http.post(path, json={"model": served_model, **body}, timeout=600)
        answered = time.monotonic()
    # The guard built it in time. (xgrammar 0.x, with vLLM's compiler cache on, fails to
    # compile long repeats like this one: the guard's compile refuses it as `invalid_grammar`.)
    if response.status_code == 400:
        assert response.json()["error"].get("code") != "grammar_too_complex", response.text
    # The guard built it in a worker; vLLM's validation on the loop must not build it again
    # (that held every probe for as long as the build). Each probe is a small part of the
    # build time measured on this host, so a busy host scales both.
    during = [(start, end, status) for start, end, status in prober.spans if sent <= start and end <= answered]
    assert len(during) >= 3, prober.spans
    assert all(status == 200 for _, _, status in during), during
    assert max(end - start for start, end, _ in during) < build_s / 4, (build_s, during)


def test_an_ordinary_pattern_still_constrains_the_output(
    http: httpx.Client, served_model: str
) -> None:
    response = http.post("/v1/chat/completions", json={
        "model": served_model, "messages": [{"role": "user", "content": "Say a word."}], "max_tokens": 24,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema("^[a-z]{1,8}$")}},
    })
    assert response.status_code == 200, response.text


# Builds in milliseconds, but xgrammar compiles it against the model's vocabulary (vLLM's
# engine, after validation) for minutes (~370 s on a 2-core host): the build alone bounds
# nothing, so the guard compiles too, the way the engine does.
SLOW_TO_COMPILE = "(.{1,30}){1,30}"


def test_a_grammar_that_compiles_past_the_limit_is_a_400(http: httpx.Client, served_model: str) -> None:
    body = {"model": served_model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema(SLOW_TO_COMPILE)}}}
    # Without a bound on the compile, the engine holds the request for minutes: the client
    # gives up long before that (many times the limit), and the test fails on its timeout.
    response = http.post("/v1/chat/completions", json=body, timeout=20 * LIMIT_S + 30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "grammar_too_complex", "response_format"), error


@pytest.mark.parametrize("pattern", ["a{1500}", ".{300}"])
def test_a_grammar_the_engine_cannot_compile_is_a_400_never_a_500(
    http: httpx.Client, served_model: str, pattern: str
) -> None:
    # xgrammar builds these, and with vLLM's compiler settings (its cache on) fails to
    # compile them: the engine fails the request, which reached the client as a 500.
    body = {"model": served_model, "prompt": "hi", "max_tokens": 4, "structured_outputs": {"json": schema(pattern)}}
    response = http.post("/v1/completions", json=body, timeout=20 * LIMIT_S + 30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "invalid_grammar", "structured_outputs"), error
