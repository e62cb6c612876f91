"""Rule: nothing unauthenticated sees tenant data. `/metrics` names no key id unless it is
behind a key (PROTECT_METRICS=true): the per-key series carry `key_id="hidden"` on a public
endpoint, the keys' ids on a protected one, read by an authenticated scrape."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import openai
import pytest

from components.edge.keys import key_id
from harness.server import Server, running_server
from tests.integration.conftest import ALL_KEYS

KEY_A = "sk-metrics-tenant-a-41c7e2"
KEY_B = "sk-metrics-tenant-b-9d05f3"
KEY_SCRAPER = "sk-metrics-scraper-2b8e6a"  # what Prometheus sends (an admin key)
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
KEY_LABEL = re.compile(r'key_id="([^"]*)"')


def key_labels(text: str) -> set[str]:
    return set(KEY_LABEL.findall(text))


def per_key_total(text: str, name: str, key: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and f'key_id="{key}"' in line)


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer sk-not-a-key"}], ids=["no-key", "wrong-key"])
def test_public_metrics_name_no_tenant(server: Server, client: openai.OpenAI, headers: dict[str, str]) -> None:
    """The default (PROTECT_METRICS unset): /metrics is public, so it names no key."""
    client.chat.completions.create(model="gpt-4", messages=FRANCE, max_tokens=2)  # MAIN_KEY: per-key series exist
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200
    text = response.text
    # Before: key_id="key-…" for every key that had sent a request.
    assert key_labels(text) == {"hidden"}, key_labels(text)
    assert not [key for key in ALL_KEYS if key_id(key) in text or key in text]
    # The totals stay: the series are there, without the tenants.
    assert per_key_total(text, "vllm_key_requests_total", "hidden") >= 1
    assert per_key_total(text, "vllm_key_tokens_total", "hidden") >= 1


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"API_KEYS": f"{KEY_A},{KEY_B},{KEY_SCRAPER}", "ADMIN_API_KEYS": KEY_SCRAPER, "PROTECT_METRICS": "true",
           "DEFAULT_RATE_LIMIT": "100000"}
    with running_server(tmp_path_factory.mktemp("protected-metrics"), env, name="protected-metrics") as srv:
        yield srv


def test_protected_metrics_show_key_ids_only_to_an_admin_key(protected: Server) -> None:
    for key in (KEY_A, KEY_B):
        answer = httpx.post(f"{protected.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                            json={"model": "gpt-4", "messages": FRANCE, "max_tokens": 2}, timeout=120)
        assert answer.status_code == 200, answer.text
    ids = {key_id(KEY_A), key_id(KEY_B)}
    for headers in ({}, {"authorization": "Bearer sk-not-a-key"}):
        refused = httpx.get(f"{protected.url}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 401, refused.status_code
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert not [kid for kid in ids if kid in refused.text]
    # A tenant's own key reads no other tenant's ids either: an admin (scraper) key does.
    tenant = httpx.get(f"{protected.url}/metrics", headers={"authorization": f"Bearer {KEY_A}"}, timeout=10)
    assert tenant.status_code == 403 and tenant.json()["error"]["code"] == "permission_denied", tenant.text
    assert not [kid for kid in ids if kid in tenant.text]
    scrape = httpx.get(f"{protected.url}/metrics", headers={"authorization": f"Bearer {KEY_SCRAPER}"}, timeout=10)
    assert scrape.status_code == 200
    assert ids <= key_labels(scrape.text) and "hidden" not in key_labels(scrape.text), key_labels(scrape.text)
    for kid in ids:
        assert per_key_total(scrape.text, "vllm_key_requests_total", kid) >= 1
        assert per_key_total(scrape.text, "vllm_key_tokens_total", kid) >= 1
