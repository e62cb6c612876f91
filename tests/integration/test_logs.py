"""Runs after the other API tests (file order): their traffic is in the server's log by now."""

from __future__ import annotations

import httpx

from tests.integration.conftest import ALL_KEYS


def test_no_api_key_appears_in_the_logs(server) -> None:
    wrong = "sk-wrong-secret-do-not-log-91ab"
    httpx.get(f"{server.url}/v1/models", headers={"authorization": f"Bearer {wrong}"}, timeout=10)
    httpx.get(f"{server.url}/v1/models", headers={"authorization": f"Bearer {ALL_KEYS[0]}"}, timeout=10)
    log = server.log()
    assert len(log) > 1000
    for key in (*ALL_KEYS, wrong):
        assert key not in log
