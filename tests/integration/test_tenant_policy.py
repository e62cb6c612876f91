"""Tenant policy on two real replicas (bentoml serve + vLLM + the bundled model) sharing one
real redis-server and one keys file, mounted as Kubernetes mounts a Secret: `keys.yaml` is a
symlink through `..data`, which an update swaps atomically to a new directory."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from harness.server import Server, start_server, wait_until
from tests.integration.windows import in_one_minute

KEY_TPM = "sk-tenant-tpm-8f21c0"  # tokens_per_minute 400
KEY_DROP = "sk-tenant-drop-5b77e1"
KEY_BUDGET = "sk-tenant-budget-0c4d9a"  # token_budget 100 a day
KEY_NARROW = "sk-tenant-narrow-6e2f18"  # may use gpt-4 only
KEY_STREAM = "sk-tenant-stream-93ab40"
KEY_OLD = "sk-tenant-old-41d2c7"  # revoked by the reload
KEY_NEW = "sk-tenant-new-a70e55"  # added by the reload
KEY_ADMIN = "sk-tenant-admin-1d9b62"
TPM, BUDGET, MAX_TOKENS = 400, 100, 64
PROMPT = "The capital of France is"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_yaml(revoke_old: bool = False) -> str:
    entries = [
        ("tenant-tpm", KEY_TPM, f"tokens_per_minute: {TPM}"),
        ("tenant-drop", KEY_DROP, "tokens_per_minute: 100000"),
        ("tenant-budget", KEY_BUDGET, f"token_budget: {BUDGET}\n    budget_period: day"),
        ("tenant-narrow", KEY_NARROW, "models: [gpt-4]"),
        ("tenant-stream", KEY_STREAM, "priority: interactive"),
        ("ops", KEY_ADMIN, "admin: true"),
        ("tenant-new" if revoke_old else "tenant-old", KEY_NEW if revoke_old else KEY_OLD, "name: rotated"),
    ]
    return "keys:\n" + "".join(f"  - id: {kid}\n    sha256: '{sha(key)}'\n    {extra}\n" for kid, key, extra in entries)


def swap_in(mount: Path, version: str, text: str) -> None:
    """What the kubelet does: a new timestamped directory, then an atomic rename of `..data`."""
    target = mount / f"..{version}"
    target.mkdir()
    (target / "keys.yaml").write_text(text)
    tmp = mount / "..data_tmp"
    tmp.symlink_to(target.name)
    os.replace(tmp, mount / "..data")


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mount = tmp_path_factory.mktemp("secret-mount")
    swap_in(mount, "v1", keys_yaml())
    (mount / "keys.yaml").symlink_to("..data/keys.yaml")
    return mount


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, redis_url: str, mount: Path) -> Iterator[list[Server]]:
    env = {"KEYS_FILE": str(mount / "keys.yaml"), "RATE_LIMIT_STORAGE_URI": redis_url, "REQUIRE_API_KEYS": "true",
           "DEFAULT_RATE_LIMIT": "100000", "MAX_NUM_SEQS": "8", "MAX_QUEUE_SIZE": "32", "MAX_QUEUED_PER_KEY": "32",
           # Per-key series name keys only behind an admin key (the scrape of this suite).
           "PROTECT_METRICS": "true"}
    # A home each: BentoML keeps its Prometheus files there, and replicas sharing it would
    # each report the sum of both (as two pods never do).
    started = [start_server(tmp_path_factory.mktemp(f"replica{i}"), env, name=f"replica-{i}") for i in range(2)]
    try:
        for server in started:  # both load at once (two engines on a shared host: minutes each)
            server.wait_ready(timeout=1500)
        yield started
    finally:
        for server in started:
            server.stop()


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def complete(server: Server, key: str, max_tokens: int, **extra: object) -> httpx.Response:
    body = {"model": "gpt-4", "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
            **extra}
    return httpx.post(f"{server.url}/v1/completions", json=body, headers=auth(key), timeout=120)


def usage(server: Server, kid: str) -> dict:
    report = httpx.get(f"{server.url}/admin/usage", headers=auth(KEY_ADMIN), timeout=10).json()
    return next(entry for entry in report["keys"] if entry["key_id"] == kid)


def answer(server: Server, path: str, key: str | None = None) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers=auth(key) if key else {}, timeout=10)


def policy_version(server: Server) -> str:
    return answer(server, "/admin/usage", KEY_ADMIN).json()["keys_policy"]


def prompt_tokens(server: Server) -> int:
    return complete(server, KEY_STREAM, 1).json()["usage"]["prompt_tokens"]


def test_token_limit_holds_across_two_replicas(replicas: list[Server]) -> None:
    reserve = prompt_tokens(replicas[0]) + MAX_TOKENS

    def burst() -> tuple[list[httpx.Response], list[int]]:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda i: complete(replicas[i % 2], KEY_TPM, MAX_TOKENS), range(20)))
        # Both replicas read the same ledger.
        return answers, [usage(server, "tenant-tpm")["minute"]["tokens"] for server in replicas]

    # One token window for the burst and both readings, however long the burst takes
    # (before: it had to end within 55 s of the top of a minute).
    answers, readings = in_one_minute(burst)
    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(admitted) == TPM // reserve, [a.status_code for a in answers]
    for answer in refused:
        assert answer.status_code == 429 and answer.json()["error"]["type"] == "tokens", answer.text
        assert answer.headers["x-ratelimit-limit-tokens"] == str(TPM) and "retry-after" in answer.headers
    charged = sum(a.json()["usage"]["total_tokens"] for a in admitted)
    assert charged == len(admitted) * reserve <= TPM
    assert readings == [charged, charged], readings


def test_a_dropped_stream_is_charged_what_it_used(replicas: list[Server]) -> None:
    server = replicas[1]
    prompt = prompt_tokens(server)

    def dropped_stream() -> tuple[list[str], int]:
        before = usage(server, "tenant-drop")["minute"]["tokens"]
        events = []
        body = {"model": "gpt-4", "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=auth(KEY_DROP),
                          timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line)
                if len(events) == 10:
                    break  # the client goes away mid-stream
        # The reservation (prompt + 400) is settled to what was used; the timeout only stops a hang.
        settled = lambda: usage(server, "tenant-drop")["minute"]["tokens"] - before < prompt + 400  # noqa: E731
        assert wait_until(settled, 120), usage(server, "tenant-drop")
        return events, usage(server, "tenant-drop")["minute"]["tokens"] - before

    events, charged = in_one_minute(dropped_stream)
    assert all('"usage"' not in event for event in events)  # the service's own usage chunks stay inside
    assert prompt + 10 <= charged < prompt + 400


def test_a_budget_refuses_the_request_that_would_exceed_it(replicas: list[Server]) -> None:
    prompt = prompt_tokens(replicas[0])
    first = complete(replicas[0], KEY_BUDGET, 20)
    assert first.status_code == 200, first.text
    left = BUDGET - (prompt + 20)
    too_big = complete(replicas[1], KEY_BUDGET, left - prompt + 1)
    assert too_big.status_code == 429, too_big.text
    assert too_big.json()["error"]["code"] == "insufficient_quota"
    fits = complete(replicas[1], KEY_BUDGET, left - prompt)
    assert fits.status_code == 200, fits.text
    assert usage(replicas[0], "tenant-budget")["budget"] == {
        "tokens": BUDGET, "limit": BUDGET, "resets_in_s": pytest.approx(usage(replicas[0], "tenant-budget")
                                                                          ["budget"]["resets_in_s"], abs=5)}


def test_a_key_sees_and_calls_only_its_models(replicas: list[Server]) -> None:
    server = replicas[0]
    listed = httpx.get(f"{server.url}/v1/models", headers=auth(KEY_NARROW), timeout=10).json()
    assert [m["id"] for m in listed["data"]] == ["gpt-4"]
    everything = httpx.get(f"{server.url}/v1/models", headers=auth(KEY_STREAM), timeout=10).json()
    served = everything["data"][0]["id"]
    assert len(everything["data"]) > 1
    refused = httpx.post(f"{server.url}/v1/chat/completions", headers=auth(KEY_NARROW), timeout=60,
                         json={"model": served, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{server.url}/v1/models/{served}", headers=auth(KEY_NARROW), timeout=10).status_code == 404
    allowed = httpx.post(f"{server.url}/v1/chat/completions", headers=auth(KEY_NARROW), timeout=60,
                         json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert allowed.status_code == 200, allowed.text


def test_usage_endpoint_is_admin_only_and_per_key_metrics_are_bounded(replicas: list[Server]) -> None:
    server = replicas[0]
    assert httpx.get(f"{server.url}/admin/usage", headers=auth(KEY_STREAM), timeout=10).status_code == 403
    assert httpx.get(f"{server.url}/admin/usage", timeout=10).status_code == 401
    report = httpx.get(f"{server.url}/admin/usage", headers=auth(KEY_ADMIN), timeout=10).json()
    assert report["scope"] == "cluster" and {"tenant-tpm", "ops"} <= {k["key_id"] for k in report["keys"]}
    httpx.get(f"{server.url}/v1/models", headers=auth("sk-nobody-at-all"), timeout=10)
    assert httpx.get(f"{server.url}/metrics", headers=auth(KEY_STREAM), timeout=10).status_code == 403
    assert complete(server, KEY_STREAM, 2).status_code == 200  # this test's own tokens, on this replica
    text = httpx.get(f"{server.url}/metrics", headers=auth(KEY_ADMIN), timeout=10).text
    ids = set()
    for line in text.splitlines():
        if line.startswith(("vllm_key_requests_total{", "vllm_key_tokens_total{")):
            ids.add(line.split('key_id="', 1)[1].split('"', 1)[0])
    known = {"tenant-tpm", "tenant-drop", "tenant-budget", "tenant-narrow", "tenant-stream", "ops", "tenant-old",
             "tenant-new"}
    assert "tenant-stream" in ids and ids <= known | {"anonymous"}, ids
    assert 'vllm_key_tokens_total{key_id="tenant-stream",kind="completion"}' in text


def reload_errors(server: Server) -> float:
    name = "vllm_keys_reload_errors_total"
    text = httpx.get(f"{server.url}/metrics", headers=auth(KEY_ADMIN), timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + " ", name + "{")))


def loaded_at(server: Server) -> float:
    """When the server built the keys policy it now uses (its own clock, this host's)."""
    stamp = answer(server, "/debug/runtime", KEY_ADMIN).json()["keys_policy"]["loaded_at"]
    return datetime.fromisoformat(stamp).timestamp()


def test_keys_reload_without_a_restart_and_without_failing_a_request(replicas: list[Server], mount: Path) -> None:
    # (replica, sent, done, "status last-event"): every stream, timed by this host's clock.
    results: list[tuple[int, float, float, str]] = []
    first_events = threading.Barrier(9)
    seen = threading.Event()  # the test has seen both replicas apply the new file

    def stream(i: int, first: bool) -> None:
        # Lengths differ per thread, so the streams of a replica do not all end (and
        # restart) together.
        body = {"model": "gpt-4", "prompt": PROMPT, "max_tokens": 24 + 5 * i, "ignore_eos": True, "stream": True}
        last, waited = "", not first
        sent = time.time()
        with httpx.stream("POST", f"{replicas[i % 2].url}/v1/completions", json=body, headers=auth(KEY_STREAM),
                          timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    last = line
                    if not waited:
                        waited = True
                        first_events.wait(60)
        results.append((i % 2, sent, time.time(), f"{response.status_code} {last}"))

    def keep_streaming(i: int) -> None:
        """Stream after stream until the test has seen the reload: requests are in flight on
        both replicas the whole time, however long the reload takes."""
        stream(i, first=True)
        while not seen.is_set():
            stream(i, first=False)

    def status(server: Server, key: str) -> int:
        return httpx.get(f"{server.url}/v1/models", headers=auth(key), timeout=10).status_code

    assert all(status(s, KEY_OLD) == 200 and status(s, KEY_NEW) == 401 for s in replicas)
    versions = {policy_version(s) for s in replicas}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        running = [pool.submit(keep_streaming, i) for i in range(8)]
        try:
            first_events.wait(60)  # all 8 streams are under way
            swapped = time.time()
            swap_in(mount, "v2", keys_yaml(revoke_old=True))
            # Applied under load, not only once it ends (the load goes on until this holds);
            # the timeout only stops a hang (before: it had to hold within 2 s).
            assert wait_until(lambda: all(status(s, KEY_NEW) == 200 and status(s, KEY_OLD) == 401 for s in replicas),
                              120, interval=0.05), "the new keys file was never applied under load"
            seen_at = time.time()
        finally:
            seen.set()
        for future in running:
            future.result()
    assert [r[3] for r in results] == ["200 data: [DONE]"] * len(results), results
    new_versions = {policy_version(s) for s in replicas}
    assert len(new_versions) == 1 and new_versions != versions, (versions, new_versions)
    # Server-side timestamps: each replica built the new policy after the swap, and did so
    # while streams sent before that moment were still being answered on it.
    for index, server in enumerate(replicas):
        applied = loaded_at(server)
        assert swapped <= applied <= seen_at, (swapped, applied, seen_at)
        across = [r for r in results if r[0] == index and r[1] < applied < r[2]]
        assert across, f"no stream on replica {index} was in flight when it applied the new file"

    errors_before = [reload_errors(s) for s in replicas]
    swap_in(mount, "v3", "keys:\n  - id: [broken\n")
    # The count, not a time: the timeout only stops a hang.
    assert wait_until(lambda: all(reload_errors(s) > before for s, before in zip(replicas, errors_before,
                                                                                   strict=True)), 60)
    for server in replicas:
        health = answer(server, "/debug/runtime", KEY_ADMIN).json()["keys_policy"]
        assert health["version"] in new_versions and health["last_reload_error"], health
        assert status(server, KEY_NEW) == 200 and status(server, KEY_OLD) == 401
    print(f"\nkeys reload applied on both replicas {seen_at - swapped:.2f} s after the swap, "
          f"{len(results)} streams, none failed")


def test_a_responses_conversation_continues_on_the_other_replica(replicas: list[Server]) -> None:
    """Stored responses live in the replicas' shared Redis, not in one replica's memory."""
    import openai

    first_replica, second_replica = (openai.OpenAI(base_url=f"{r.url}/v1", api_key=KEY_STREAM, max_retries=0,
                                                   timeout=120) for r in replicas)
    first_input = "My name is Ada. Say hello to me."
    first = first_replica.responses.create(input=first_input, max_output_tokens=8, temperature=0)
    follow = second_replica.responses.create(input="What is my name?", previous_response_id=first.id,
                                             max_output_tokens=4, temperature=0)
    conversation = [{"role": "user", "content": first_input}, {"role": "assistant", "content": first.output_text},
                    {"role": "user", "content": "What is my name?"}]
    counted = httpx.post(f"{replicas[1].url}/tokenize", headers={"authorization": f"Bearer {KEY_STREAM}"},
                         json={"messages": conversation, "add_generation_prompt": True, "add_special_tokens": True},
                         timeout=30).json()["count"]
    assert follow.usage.input_tokens == counted
    assert second_replica.responses.retrieve(first.id).output_text == first.output_text


# --- fail closed (issue #24, rules 4 and 6) ---------------------------------------------


def settle_on(replicas: list[Server], mount: Path, version: str, text: str) -> list[float]:
    """Swap a good file in, wait until both replicas apply it (and count no more reload
    errors); the reload error counts then."""
    swap_in(mount, version, text)
    expected = hashlib.sha256(text.encode()).hexdigest()[:12]
    assert wait_until(lambda: all(policy_version(s) == expected and answer(s, "/healthz").json()["keys_policy"] == "ok"
                                  for s in replicas), 60)
    return [reload_errors(s) for s in replicas]


def refused_or_applied(replicas: list[Server], errors_before: list[float], applied: Callable[[Server], bool]) -> None:
    """Wait until each replica either counted the reload error or applied the file (the bug)."""
    assert wait_until(lambda: all(reload_errors(s) > before or applied(s)
                                  for s, before in zip(replicas, errors_before, strict=True)), 60)


def test_an_emptied_keys_file_never_turns_authentication_off(replicas: list[Server], mount: Path) -> None:
    """Seen: after `keys: []` a request with no key got 200, and so did GET /admin/usage."""
    good = keys_yaml(revoke_old=True)
    errors_before = settle_on(replicas, mount, "fail-closed-1", good)
    version = policy_version(replicas[0])
    swap_in(mount, "emptied", "keys: []\n")
    refused_or_applied(replicas, errors_before, lambda s: answer(s, "/v1/models").status_code == 200)
    for server in replicas:
        for path in ("/v1/models", "/admin/usage", "/debug/runtime"):
            refused = answer(server, path)
            assert refused.status_code == 401, (path, refused.text)
            assert refused.json()["error"]["code"] == "invalid_api_key"
        assert answer(server, "/v1/models", KEY_NEW).status_code == 200  # the last good policy stays
        assert policy_version(server) == version
        assert answer(server, "/healthz").json()["keys_policy"] == "stale"
        assert "keys file not reloaded" in server.log()


def test_a_disabled_twin_of_a_key_refuses_the_whole_file(replicas: list[Server], mount: Path) -> None:
    """A file with two entries for one digest (a `disabled` twin above the original; the last
    entry won) is refused as a whole: the key it also drops (KEY_NEW) keeps working."""
    errors_before = settle_on(replicas, mount, "fail-closed-2", keys_yaml(revoke_old=True))
    twin = f"  - id: stream-twin\n    sha256: '{sha(KEY_STREAM)}'\n    disabled: true\n"
    doubled = keys_yaml().replace("keys:\n", "keys:\n" + twin, 1).replace(sha(KEY_OLD), sha("sk-someone-else-77"))
    swap_in(mount, "twin", doubled)
    refused_or_applied(replicas, errors_before, lambda s: answer(s, "/v1/models", KEY_NEW).status_code == 401)
    for server in replicas:
        assert answer(server, "/v1/models", KEY_NEW).status_code == 200
        assert answer(server, "/v1/models", KEY_STREAM).status_code == 200
        assert answer(server, "/healthz").json()["keys_policy"] == "stale"
    errors_before = settle_on(replicas, mount, "fail-closed-3", keys_yaml(revoke_old=True))
    assert all(answer(s, "/healthz").json()["keys_policy"] == "ok" for s in replicas)


def test_the_public_healthz_carries_no_tenant_data(replicas: list[Server], mount: Path) -> None:
    """Seen: /healthz (no key) showed the keys file's path, the key count and the last reload
    error; the admin view keeps them."""
    settle_on(replicas, mount, "fail-closed-4", keys_yaml(revoke_old=True))
    swap_in(mount, "broken-again", "keys:\n  - id: tenant-secret-name\n    sha256: [broken\n")
    server = replicas[0]
    assert wait_until(lambda: answer(server, "/healthz").json()["keys_policy"] not in ("ok", None), 60)
    text = answer(server, "/healthz").text
    document = json.loads(text)
    assert document["keys_policy"] == "stale", document
    for secret in (str(mount), "keys.yaml", "tenant-secret-name", "tenant-tpm", "ops", "not valid YAML"):
        assert secret not in text, secret
    admin = answer(server, "/debug/runtime", KEY_ADMIN).json()["keys_policy"]
    assert admin["source"] == str(mount / "keys.yaml") and admin["keys"] == 7 and admin["last_reload_error"]
    assert admin["status"] == "stale"
    settle_on(replicas, mount, "fail-closed-5", keys_yaml(revoke_old=True))
