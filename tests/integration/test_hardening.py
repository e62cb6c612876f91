"""A hostile or careless tenant against the real service: the breaker, fair shares between
keys, sequences counted by admission, one owner per generation, disconnects and stalls."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from harness.server import Server, running_server, wait_until

GREEDY = "sk-test-greedy-19af2c"
POLITE = "sk-test-polite-7d03be"
CAPACITY = 4  # MAX_NUM_SEQS
PLACES = 2 * CAPACITY  # with vLLM's own queue (ENGINE_QUEUE_DEPTH unset: MAX_NUM_SEQS)
QUEUED_SHARE = 2  # requests one key may have waiting
PROMPT = "Once upon a time"
FRANCE = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "API_KEYS": f"{GREEDY},{POLITE}",
        "DEFAULT_RATE_LIMIT": "100000",
        "MAX_NUM_SEQS": str(CAPACITY),
        "MAX_QUEUE_SIZE": "8",
        "MAX_QUEUED_PER_KEY": str(QUEUED_SHARE),
        "REQUEST_TIMEOUT_SECONDS": "0",  # nothing here may end by the host's speed
        "QUEUE_TIMEOUT_SECONDS": "600",  # nor wait out the queue's bound
        "MAX_PROMPTS": "8",
        # Queued requests age past a class within the test: a busy key's must still not
        # overtake another key's (CI once saw them do so on a slow host, after 10 s).
        "PRIORITY_AGING_SECONDS": "1",
    }
    with running_server(tmp_path_factory.mktemp("hardening"), env, name="hardening") as srv:
        yield srv


def headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def health(server: Server) -> dict:
    return httpx.get(f"{server.url}/healthz", timeout=10).json()


def idle(server: Server) -> bool:
    h = health(server)
    return h["active_requests"] == 0 and h["queued_requests"] == 0 and h["engine_unfinished_requests"] == 0


def long_completion(stream: bool = False) -> dict:
    # Far more tokens than any test waits for: the client ends it.
    return {"prompt": PROMPT, "max_tokens": 3000, "ignore_eos": True, "stream": stream}


def metric_total(server: Server, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def polite_stream(server: Server, started: threading.Event) -> tuple[int, float]:
    """The polite key's request, streamed: (status, when its first token came)."""
    body = {"messages": FRANCE, "max_tokens": 8, "stream": True}
    first = float("inf")
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=headers(POLITE),
                      timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and first == float("inf"):
                first = time.monotonic()
                started.set()
        return r.status_code, first


class GreedyStreams:
    """The greedy key's streams: each holds its place (the server has no time limit) until
    the test closes it, so nothing here races the host's speed."""

    def __init__(self, server: Server, total: int) -> None:
        self.url = f"{server.url}/v1/completions"
        self.first_event = [threading.Event() for _ in range(total)]
        self.first_at = [float("inf")] * total
        self.close = [threading.Event() for _ in range(total)]

    def run(self, i: int) -> int:
        with httpx.stream("POST", self.url, json=long_completion(stream=True), headers=headers(GREEDY),
                          timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and not self.first_event[i].is_set():
                    self.first_at[i] = time.monotonic()
                    self.first_event[i].set()
                if self.close[i].is_set():
                    break
            return r.status_code

    def started(self) -> list[int]:
        return [i for i, event in enumerate(self.first_event) if event.is_set()]

    def close_all(self) -> None:
        for event in self.close:
            event.set()


def test_one_key_cannot_take_every_place(server: Server) -> None:
    # The greedy key alone may fill the engine: CAPACITY sequences running and, by default
    # (ENGINE_QUEUE_DEPTH unset), as many waiting rendered in vLLM's own queue;
    # QUEUED_SHARE more wait in the fair queue.
    url = f"{server.url}/v1/completions"
    total = PLACES + QUEUED_SHARE
    greedy = GreedyStreams(server, total)

    with concurrent.futures.ThreadPoolExecutor(total + 1) as pool:
        try:
            in_engine = [pool.submit(greedy.run, i) for i in range(PLACES)]
            assert wait_until(lambda: health(server)["engine_unfinished_requests"] == PLACES
                              and len(greedy.started()) == CAPACITY, 120)
            queued = [pool.submit(greedy.run, PLACES + i) for i in range(QUEUED_SHARE)]
            assert wait_until(lambda: health(server)["queued_requests"] == QUEUED_SHARE, 10)
            refused = httpx.post(url, json=long_completion(), headers=headers(GREEDY), timeout=30)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert refused.headers["retry-after"]
            # The other key still gets in, and ahead of the greedy key's waiting requests.
            polite_started = threading.Event()
            polite = pool.submit(polite_stream, server, polite_started)
            assert wait_until(lambda: health(server)["queued_requests"] == QUEUED_SHARE + 1, 10)
            waiting = [i for i in range(total) if not greedy.first_event[i].is_set()]
            # One greedy stream ends: its place in the fair queue goes to the other key, whose
            # request then waits first in vLLM's queue. The engine slot itself may go to a
            # greedy request already waiting there (the abort can reach vLLM before the other
            # key's request does), so a second greedy stream ends too.
            first, second = greedy.started()[:2]
            greedy.close[first].set()
            # ... and the other key's request has reached vLLM (the abort took one place there),
            # or has already been served: when it reaches vLLM before the abort's place is
            # refilled it takes that place, and its 8 tokens may end before a look sees it there.
            assert wait_until(lambda: polite_started.is_set()
                              or (health(server)["queued_requests"] == QUEUED_SHARE
                                  and health(server)["engine_unfinished_requests"] == PLACES), 60)
            greedy.close[second].set()
            # Bounded by the first of: the other key's first token, or a second greedy request
            # overtaking it (which, were vLLM's queue first come first served, would hold the
            # engine until this test ends it).
            assert wait_until(lambda: polite_started.is_set()
                              or sum(greedy.first_event[i].is_set() for i in waiting) >= 2, 120)
            assert polite_started.is_set(), "a second greedy request was served before the other key's"
            status, polite_first_at = polite.result(timeout=300)
            assert status == 200
            # Timestamps, not a look after the fact: once the polite request ends, its slot
            # rightly goes to a greedy one, which may start before this line runs.
            overtook = [i for i in waiting if greedy.first_at[i] < polite_first_at]
            assert len(overtook) <= 1, f"greedy requests served before the other key's: {overtook}"
        finally:
            greedy.close_all()
        statuses = [f.result() for f in in_engine + queued]
    assert statuses == [200] * total
    assert all(event.is_set() for event in greedy.first_event)
    assert wait_until(lambda: idle(server), 30)


def test_the_exported_waiting_count_sees_the_fair_queue(server: Server) -> None:
    """Autoscalers and routers read vLLM's `vllm:num_requests_waiting`. The engine alone sees
    at most ENGINE_QUEUE_DEPTH waiting (here CAPACITY); under overload the rest wait in the
    fair queue, so the exported gauge must count them, while the engine's own count
    (`vllm:num_requests_waiting_by_reason`) stays at the depth."""
    total = PLACES + QUEUED_SHARE
    greedy = GreedyStreams(server, total)
    seen: list[tuple[float, float, int]] = []

    def overloaded() -> bool:
        exported = metric_total(server, "vllm:num_requests_waiting")
        engine_own = metric_total(server, "vllm:num_requests_waiting_by_reason")
        seen.append((exported, engine_own, health(server)["queued_requests"]))
        return exported == PLACES - CAPACITY + QUEUED_SHARE

    with concurrent.futures.ThreadPoolExecutor(total) as pool:
        try:
            streams = [pool.submit(greedy.run, i) for i in range(PLACES)]
            assert wait_until(lambda: health(server)["engine_unfinished_requests"] == PLACES
                              and len(greedy.started()) == CAPACITY, 120)
            streams += [pool.submit(greedy.run, PLACES + i) for i in range(QUEUED_SHARE)]
            assert wait_until(lambda: health(server)["queued_requests"] == QUEUED_SHARE, 10)
            # The gauges are set on engine steps: the running streams make one every few
            # hundred milliseconds at most.
            assert wait_until(overloaded, 30), seen[-5:]
            _, engine_own, fair_queue = seen[-1]
            assert engine_own == PLACES - CAPACITY, seen[-1]
            assert fair_queue == QUEUED_SHARE, seen[-1]
        finally:
            greedy.close_all()
        assert [f.result() for f in streams] == [200] * total
    assert wait_until(lambda: idle(server), 30)


def test_admission_counts_sequences_and_caps_prompt_lists(server: Server) -> None:
    url = f"{server.url}/v1/completions"
    fan_out = httpx.post(url, json={"prompt": ["a", "b", "c", "d", "e"], "n": 2, "max_tokens": 2},  # 10 > 8 places
                         headers=headers(GREEDY), timeout=60)
    assert fan_out.status_code == 400, fan_out.text
    assert fan_out.json()["error"]["code"] == "too_many_sequences"
    many = httpx.post(url, json={"prompt": ["a"] * 9, "max_tokens": 2}, headers=headers(GREEDY), timeout=60)
    assert many.status_code == 400 and many.json()["error"]["param"] == "prompt", many.text
    fits = httpx.post(url, json={"prompt": ["a", "b"], "n": 2, "max_tokens": 2}, headers=headers(GREEDY), timeout=60)
    assert fits.status_code == 200 and len(fits.json()["choices"]) == 4


def test_beam_search_is_refused_clearly(server: Server) -> None:
    response = httpx.post(f"{server.url}/v1/completions",
                          json={"prompt": PROMPT, "max_tokens": 8, "use_beam_search": True, "n": 2},
                          headers=headers(GREEDY), timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "use_beam_search"


def test_prompt_plus_max_tokens_beyond_the_context_is_a_400(server: Server) -> None:
    response = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": FRANCE, "max_tokens": 4090},
                          headers=headers(GREEDY), timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and "4096" in error["message"]
    within = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": FRANCE, "max_tokens": 3000,
                        "stop": ["."], "temperature": 0}, headers=headers(GREEDY), timeout=600)
    assert within.status_code == 200, within.text


def test_disconnect_is_a_499_at_info_and_nothing_is_parked(server: Server) -> None:
    before_499 = metric_total(server, "vllm_request_total", status="499")
    before_500 = metric_total(server, "vllm_request_total", status="500")
    body = {"prompt": PROMPT, "max_tokens": 3000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, headers=headers(GREEDY), timeout=1)
    assert wait_until(lambda: metric_total(server, "vllm_request_total", status="499") == before_499 + 1, 10)
    assert metric_total(server, "vllm_request_total", status="500") == before_500
    assert wait_until(lambda: idle(server), 10)
    # BentoML's own in-progress gauge comes back to zero: its timeout middleware holds nothing.
    assert wait_until(lambda: metric_total(server, "bentoml_service_request_in_progress") == 0, 10)
    log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"status": 499' in line]
    assert lines and lines[-1]["level"] == "INFO" and lines[-1]["error_type"] == "client_closed_request"
    assert "Traceback" not in log


def test_random_paths_do_not_grow_the_metrics(server: Server) -> None:
    def series() -> int:
        return sum(1 for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines()
                   if line.startswith("bentoml_service_request_total{"))

    httpx.get(f"{server.url}/nope-warmup", timeout=10)
    before = series()
    for i in range(20):
        assert httpx.get(f"{server.url}/random-{i}", timeout=10).status_code in (401, 404)
    assert series() == before
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'endpoint="/other"' in text and "/random-" not in text


def test_trailing_slash_is_a_404_not_a_redirect_echoing_the_host(server: Server) -> None:
    response = httpx.post(f"{server.url}/v1/chat/completions/", json={"messages": FRANCE, "max_tokens": 2},
                          headers={**headers(POLITE), "host": "evil.example"}, timeout=30, follow_redirects=False)
    assert response.status_code == 404, response.status_code
    assert "location" not in response.headers
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("options", "expected"),
    [(None, "none"), ({"include_usage": True}, "last"),
     ({"include_usage": True, "continuous_usage_stats": True}, "every")],
)
def test_a_stream_carries_usage_only_where_the_client_asked(server: Server, options: dict | None,
                                                            expected: str) -> None:
    """Without token limits the service needs no usage in every chunk; a client that did not
    ask for it must not get it (it once did, and every chunk paid for its JSON)."""
    body = {"messages": FRANCE, "max_tokens": 4, "stream": True, **({"stream_options": options} if options else {})}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=headers(POLITE),
                      timeout=120) as r:
        assert r.status_code == 200
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    with_usage = [bool(c.get("usage")) for c in chunks]
    if expected == "none":
        assert not any(with_usage)
    elif expected == "last":
        assert with_usage == [False] * (len(chunks) - 1) + [True] and not chunks[-1]["choices"]
    else:
        assert all(with_usage)
