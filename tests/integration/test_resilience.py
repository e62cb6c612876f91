"""Faults with real processes: client disconnects, generation timeouts, SIGTERM draining,
and the death of the engine core process."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from harness.server import Server, running_server, start_server, wait_until

PROMPT = "Once upon a time"
STALL_S = 3


def running_in_engine(server: Server) -> int:
    """The engine's own count of requests it still holds (see /healthz)."""
    return httpx.get(f"{server.url}/healthz", timeout=10).json()["engine_unfinished_requests"]


def generated_tokens(server: Server) -> float:
    """vLLM's own count of the tokens its engine generated (vllm:generation_tokens_total):
    the work done, whether or not a client received it."""
    name = "vllm:generation_tokens_total"
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + "{", name + " "))]
    assert values, f"{name} is not on /metrics: a check on it would pass for nothing"
    return sum(values)


def generated_once_idle(server: Server) -> float:
    """The engine's generated-token count once it holds no request, read until two reads
    agree (a step's stats are recorded just after its outputs). The timeouts only stop a hang."""
    assert wait_until(lambda: running_in_engine(server) == 0, 300), "the engine still holds a request"
    readings = [generated_tokens(server)]
    assert wait_until(lambda: readings.append(generated_tokens(server)) or readings[-1] == readings[-2], 60)
    return readings[-1]


def descendants(server: Server) -> list[psutil.Process]:
    try:
        return psutil.Process(server.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stream_events(url: str, body: dict, headers: dict | None = None, first_event: threading.Event | None = None) -> list[str]:
    events = []
    with httpx.stream("POST", url, json=body, headers=headers or {}, timeout=300) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
                if first_event is not None:
                    first_event.set()
    return events


# --- client disconnect, on the shared server --------------------------------------------


def test_client_disconnect_aborts_generation_in_the_engine(server: Server, auth: dict[str, str]) -> None:
    tokens = 2000
    body = {"model": "gpt-4", "prompt": PROMPT, "max_tokens": tokens, "ignore_eos": True, "stream": True}
    before = generated_once_idle(server)
    clients = [httpx.Client(timeout=60) for _ in range(3)]  # one connection each, kept open
    streams = []
    readers = []  # dropping a line iterator would close its response
    for client in clients:
        response = client.send(client.build_request("POST", f"{server.url}/v1/completions", json=body, headers=auth), stream=True)
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        streams.append(response)
        readers.append(lines)
    seen: list[int] = []
    assert wait_until(lambda: seen.append(running_in_engine(server)) or seen[-1] == 3, 60), seen
    for response, client in zip(streams, clients):
        response.close()
        client.close()
    # Counted, not timed: the engine let go of the requests before generating what they asked
    # (ignore_eos: left alone, it generates every token). Before: idle within 5 s, which a host
    # fast enough to finish 3 x 2000 tokens in 5 s passed with no abort at all.
    generated = generated_once_idle(server) - before
    assert generated < 3 * tokens, f"the engine kept generating for nobody: {generated:.0f} tokens"
    health = httpx.get(f"{server.url}/healthz", timeout=10).json()
    assert health["active_requests"] == 0


def test_non_streaming_disconnect_aborts_too(server: Server, auth: dict[str, str]) -> None:
    tokens = 2000
    body = json.dumps({"model": "gpt-4", "prompt": PROMPT, "max_tokens": tokens, "ignore_eos": True}).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in {
        "host": "127.0.0.1", "content-type": "application/json", "content-length": str(len(body)), **auth}.items())
    before = generated_once_idle(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\n{head}\r\n".encode() + body)
        # Leave once the engine holds the request (its own count says so), not after a client
        # timeout that a fast host could outrun with the whole answer.
        assert wait_until(lambda: running_in_engine(server) == 1, 60, interval=0.05)
    generated = generated_once_idle(server) - before
    assert generated < tokens, f"the engine kept generating for nobody: {generated:.0f} tokens"


# --- timeouts and tools without a parser: a server of their own ---------------------------


@pytest.fixture(scope="module")
def timeout_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "API_KEYS": "",
        "DEFAULT_RATE_LIMIT": "1000",
        "REQUEST_TIMEOUT_SECONDS": "5",
        "TOOL_CALL_PARSER": "none",
        "MAX_NUM_SEQS": "8",
        "BREAKER_MIN_CALLS": "2",  # two engine faults in a row would open it
        "BREAKER_WINDOW": "4",
    }
    with running_server(tmp_path_factory.mktemp("timeout"), env, name="timeout") as srv:
        yield srv


def test_tools_without_a_parser_get_a_clear_400(timeout_server: Server) -> None:
    body = {
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
    }
    response = httpx.post(f"{timeout_server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert "tool" in response.json()["error"]["message"]


def test_generation_timeout_aborts_with_504_or_error_event(timeout_server: Server) -> None:
    # 3000 tokens take far longer than 5 s on any CPU this runs on: the time limit, not the
    # host's speed, decides when this request ends.
    tokens = 3000
    body = {"prompt": PROMPT, "max_tokens": tokens, "ignore_eos": True}
    before = generated_once_idle(timeout_server)
    response = httpx.post(f"{timeout_server.url}/v1/completions", json=body, timeout=300)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    # The limit ended the generation in the engine too (before: the answer within 30 s).
    generated = generated_once_idle(timeout_server) - before
    assert generated < tokens, generated
    events = stream_events(f"{timeout_server.url}/v1/completions", {**body, "stream": True})
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "timeout"
    assert len(events) - 2 < tokens  # token events before the error: cut short
    generated = generated_once_idle(timeout_server) - before - generated
    assert generated < tokens, generated


def test_client_chosen_time_limits_never_open_the_breaker(timeout_server: Server) -> None:
    url = f"{timeout_server.url}/v1/completions"
    body = {"prompt": PROMPT, "max_tokens": 3000, "ignore_eos": True}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(httpx.post, url, json=body, timeout=120) for _ in range(3)]
        responses = [future.result() for future in futures]
    assert [r.status_code for r in responses] == [504, 504, 504]
    assert all(r.json()["error"]["code"] == "timeout" for r in responses)
    health = httpx.get(f"{timeout_server.url}/healthz", timeout=10).json()
    assert health["circuit_breaker_state"] == "closed"
    # The smallest request there is: it must fit the server's 5 s limit on any host.
    ok = httpx.post(url, timeout=120, json={"prompt": "Hi", "max_tokens": 1})
    assert ok.status_code == 200, ok.text
    assert wait_until(lambda: running_in_engine(timeout_server) == 0, 120)


# --- SIGTERM draining: a server with no time limit, streams sized from the host's speed -------


@pytest.fixture(scope="module")
def drain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # No per-request time limit and a drain long enough for any host: the streams sized
    # below must end by themselves, so nothing here races the host's speed.
    env = {
        "API_KEYS": "",
        "DEFAULT_RATE_LIMIT": "1000",
        "GRACEFUL_SHUTDOWN_TIMEOUT": "600",
        "REQUEST_TIMEOUT_SECONDS": "0",
        "STREAM_STALL_TIMEOUT_SECONDS": str(STALL_S),
        "MAX_NUM_SEQS": "8",
    }
    with running_server(tmp_path_factory.mktemp("drain"), env, name="drain") as srv:
        yield srv


def test_a_client_that_stops_reading_loses_its_slot_and_connection(drain_server: Server) -> None:
    # The kernel buffers some MB of a loopback connection that is not read; this stream
    # (8 sequences, top-20 logprobs for every token: about 6 kB a step, up to ~20 MB) fills
    # them sooner or later on any host, and no time limit ends it first on this server.
    body = json.dumps({"prompt": PROMPT, "n": 8, "logprobs": 20, "max_tokens": 3000,
                       "ignore_eos": True, "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", drain_server.port))
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n".encode() + body
    )
    try:
        assert wait_until(lambda: running_in_engine(drain_server) >= 1, 60)
        # Not reading: once the socket is full, the stall limit closes the connection and
        # aborts the engine work, long before the 3000 tokens are done.
        def released() -> bool:
            health = httpx.get(f"{drain_server.url}/healthz", timeout=10).json()
            return health["active_requests"] == 0 and health["engine_unfinished_requests"] == 0

        assert wait_until(released, 600, 1)
        sock.settimeout(60)
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert b"data: [DONE]" not in received[-200:], "the stream ended normally: the socket never filled"
    finally:
        sock.close()
    assert '"error_type": "stream_stalled"' in drain_server.log()


def seconds_per_token(server: Server, concurrency: int, tokens: int = 32) -> float:
    """This host's pace: wall time per generated token with `concurrency` streams at once
    (time to first token included, so it errs on the slow side)."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "ignore_eos": True}
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(httpx.post, f"{server.url}/v1/completions", json=body, timeout=600) for _ in range(concurrency)]
        for future in futures:
            assert future.result().json()["usage"]["completion_tokens"] == tokens
    return (time.monotonic() - started) / tokens


def test_sigterm_drains_in_flight_streams_then_exits_zero(drain_server: Server) -> None:
    n = 4
    # Streams long enough (about 30 s at the measured pace) to still be running when the
    # late request is refused, whatever the host's speed and its swings; 32 to 3000 tokens.
    tokens = max(32, min(3000, int(30 / seconds_per_token(drain_server, n))))
    body = {"prompt": PROMPT, "max_tokens": tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    url = f"{drain_server.url}/v1/completions"
    started = [threading.Event() for _ in range(n)]
    processes = descendants(drain_server)
    assert any("EngineCore" in " ".join(p.cmdline()) or p.name() == "VLLM::EngineCore" for p in processes)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(stream_events, url, body, None, started[i]) for i in range(n)]
        for event in started:
            assert event.wait(120)
        drain_server.process.send_signal(signal.SIGTERM)
        # Readiness turns at once; the server keeps listening while the streams run.
        assert wait_until(
            lambda: httpx.get(f"{drain_server.url}/readyz", timeout=10).json()["reason"] == "draining", 10, 0.05
        )
        late = httpx.post(url, json={"prompt": "hi", "max_tokens": 2}, timeout=10)
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        assert late.headers["retry-after"]
        unfinished = [future for future in futures if not future.done()]
        assert unfinished, "the streams ended before the refusal was checked: the check proved nothing"
        results = [future.result(timeout=600) for future in futures]
    for events in results:
        assert events[-1] == "[DONE]"
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] == tokens
    assert drain_server.process.wait(90) == 0
    assert wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes), 10)


# --- engine death ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doomed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("doomed"),
        env={"API_KEYS": "", "DEFAULT_RATE_LIMIT": "1000", "ENGINE_DEATH_EXIT_SECONDS": "0"},
        name="doomed",
    )
    try:
        srv.first_readiness = first_readiness_answer(srv)  # type: ignore[attr-defined]
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def first_readiness_answer(server: Server, timeout: float = 120) -> tuple[int, dict]:
    """The first answer of /readyz once the server listens (the model still loading)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{server.url}/readyz", timeout=5)
            return response.status_code, response.json()
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError("the server never answered /readyz")


def test_readyz_is_503_until_the_model_is_loaded_and_warm(doomed_server: Server) -> None:
    status, body = doomed_server.first_readiness  # type: ignore[attr-defined]
    assert status == 503 and body == {"status": "not_ready", "reason": "model loading"}
    assert httpx.get(f"{doomed_server.url}/readyz", timeout=5).json() == {"status": "ready", "reason": "ready"}


def test_engine_death_fails_streams_probes_and_opens_the_breaker(doomed_server: Server) -> None:
    url = doomed_server.url
    engine = [p for p in descendants(doomed_server) if p.name() == "VLLM::EngineCore"]
    assert len(engine) == 1
    body = {"prompt": PROMPT, "max_tokens": 3000, "ignore_eos": True, "stream": True}
    started = [threading.Event() for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(stream_events, f"{url}/v1/completions", body, None, started[i]) for i in range(3)]
        for event in started:
            assert event.wait(60)
        engine[0].kill()
        # The timeout only stops a hang (before: every stream ended within 15 s of the kill).
        results = [future.result(timeout=120) for future in futures]
    for events in results:
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "server_error" and error["code"] in ("engine_dead", "engine_error")
        assert len(events) - 2 < 3000  # ended by the death, not by its length
    assert wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 503, 60)
    assert httpx.get(f"{url}/livez", timeout=5).status_code == 503
    refused = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=10)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    health = httpx.get(f"{url}/healthz", timeout=5).json()
    assert health["circuit_breaker_state"] == "open"
    assert health["status"] == "dead"
