"""With keys off behind a gateway (GATEWAY_FAIRNESS_ID on), the Gateway API Inference
Extension's `x-gateway-inference-fairness-id` header names the tenant the fair queue counts a
request against, on the real engine: a tenant holding the engine does not go first again
over another tenant's later request. Without the header every request is one tenant's, and
the older request goes first.

Two places in the engine (MAX_NUM_SEQS 2, ENGINE_QUEUE_DEPTH 0), both held by tenant A's
streams that the test closes itself; when one closes, the place goes to whichever waiting
request the queue ranks first. Order is read from which request streams first: nothing here
races the host's speed."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import httpx
import pytest

from harness.held_stream import HeldStream
from harness.server import Server, running_server, wait_until

FAIRNESS = "x-gateway-inference-fairness-id"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "API_KEYS": "", "GATEWAY_FAIRNESS_ID": "true",
        "MAX_NUM_SEQS": "2", "ENGINE_QUEUE_DEPTH": "0", "MAX_QUEUE_SIZE": "8",
        "REQUEST_TIMEOUT_SECONDS": "0", "QUEUE_TIMEOUT_SECONDS": "600",
    }
    with running_server(tmp_path_factory.mktemp("fairness"), env, name="fairness") as srv:
        yield srv


def health(server: Server) -> dict:
    return httpx.get(f"{server.url}/healthz", timeout=10).json()


def Stream(server: Server, tenant: str | None, max_tokens: int) -> HeldStream:  # noqa: N802
    return HeldStream(server.url, {} if tenant is None else {FAIRNESS: tenant}, max_tokens)


def first_of_two(server: Server, header: bool) -> tuple[HeldStream, HeldStream]:
    """A holds both places and has an older request waiting; B's request arrives later.
    One of A's places is freed: (A's waiting request, B's), both finished."""
    a, b = ("tenant-a", "tenant-b") if header else (None, None)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert wait_until(lambda: health(server)["active_requests"] == 0, 120)
        holders = [Stream(server, a, 3000) for _ in range(2)]
        held = [pool.submit(h.run) for h in holders]
        assert all(h.first.wait(180) for h in holders), "the holders never started"
        try:
            a_waiting, b_waiting = Stream(server, a, 4), Stream(server, b, 4)
            a_done = pool.submit(a_waiting.run)
            assert wait_until(lambda: health(server)["queued_requests"] == 1, 60)
            b_done = pool.submit(b_waiting.run)
            assert wait_until(lambda: health(server)["queued_requests"] == 2, 60)
            holders[0].close.set()  # one place frees: the queue's first choice takes it
            assert held[0].result(60) == 200
            assert wait_until(lambda: a_waiting.first.is_set() or b_waiting.first.is_set(), 120)
        finally:
            for h in holders:
                h.close.set()
        assert held[1].result(60) == 200
        assert a_done.result(300) == 200 and b_done.result(300) == 200
    return a_waiting, b_waiting


def test_the_fairness_id_puts_another_tenant_before_the_one_holding_the_engine(server: Server) -> None:
    a_waiting, b_waiting = first_of_two(server, header=True)
    assert b_waiting.first_at < a_waiting.first_at


def test_without_the_header_one_tenant_and_the_older_request_goes_first(server: Server) -> None:
    a_waiting, b_waiting = first_of_two(server, header=False)
    assert a_waiting.first_at < b_waiting.first_at
