"""Issue #24, rule 5, against the real service: one key's stored responses cannot evict
another key's, however large their `metadata`, and `metadata` is bounded as OpenAI bounds
it. A server of its own, with the in-memory store of `make serve` made small (128 KiB: a
key's quota is then 16 KiB, an eighth)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from harness.server import Server, start_server

VICTIM = "sk-store-victim-3e8a61"
FLOOD = "sk-store-flood-b52c07"
STORE_BYTES = 131_072


@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"API_KEYS": f"{VICTIM},{FLOOD}", "RATE_LIMIT_STORAGE_URI": "memory://", "DEFAULT_RATE_LIMIT": "1000",
           "RESPONSES_STORE_MAX_BYTES": str(STORE_BYTES)}
    server = start_server(tmp_path_factory.mktemp("store"), env=env, name="store")
    try:
        server.wait_ready(timeout=900)  # a loaded 2-core host has taken over 420 s to start one
        yield server
    finally:
        server.stop()


def client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


# OpenAI's bounds exactly: 16 pairs, keys of 64 characters, values of 512.
LARGEST = {f"{index:02d}".ljust(64, "k"): "v" * 512 for index in range(16)}


def test_a_metadata_flood_by_one_key_leaves_another_keys_response(store_server: Server) -> None:
    victim, flood = client(store_server, VICTIM), client(store_server, FLOOD)
    kept = victim.responses.create(model="gpt-4o", input="Say hi.", max_output_tokens=2)
    assert kept.store is True
    flooded = [flood.responses.create(model="gpt-4o", input="Say hi.", max_output_tokens=2, metadata=LARGEST)
               for _ in range(14)]  # ~11 KB each: 14 of them are more than the whole store
    assert victim.responses.retrieve(kept.id).id == kept.id
    # The flooding key lost its own oldest, and keeps its newest.
    assert flood.responses.retrieve(flooded[-1].id).metadata == LARGEST
    with pytest.raises(openai.NotFoundError):
        flood.responses.retrieve(flooded[0].id)


@pytest.mark.parametrize(
    "metadata",
    [{f"k{index}": "v" for index in range(17)},  # 17 pairs
     {"k" * 65: "v"},  # a key of 65 characters
     {"k": "v" * 513}],  # a value of 513 characters
)
def test_metadata_beyond_openais_bounds_is_a_400_naming_it(store_server: Server, metadata: dict[str, str]) -> None:
    reply = httpx.post(f"{store_server.url}/v1/responses", headers={"authorization": f"Bearer {VICTIM}"},
                       json={"model": "gpt-4o", "input": "Say hi.", "max_output_tokens": 2, "metadata": metadata},
                       timeout=120)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "metadata"), error
