"""Edge hygiene against the real service: 405 on public paths before any body, 431, slow
bodies (408), mid-body disconnects (answered, logged 499), 429 headers on every limited
route, admin-only /debug/runtime, CORS preflights of the OpenAI SDKs, bad edge settings."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import psutil
import pytest

from components.core.routes import public_paths
from harness.server import BENTOML, ROOT, Server, free_port, running_server

USER_KEY = "sk-edge-user-41c2e8"
ADMIN_KEY = "sk-edge-admin-7d10fa"
LIMITED_ADMIN_KEY = "sk-edge-admin-limited-93ab55"
LIMITED_N = 3
ORIGIN = "https://edge.example.com"
READ_TIMEOUT_S = 6  # long enough for the 499 test's metric scrapes on a slow host
MAX_HEADER_BYTES = 8192
# Generous bounds for a busy 2-core machine; each test asserts what it waits for, never sleeps.
WAIT_S = 60
SDK_HEADERS = (
    "x-stainless-arch", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version", "x-stainless-runtime",
    "x-stainless-runtime-version", "x-stainless-retry-count", "x-stainless-timeout", "x-stainless-async",
    "x-stainless-helper-method", "openai-beta", "traceparent", "tracestate", "baggage", "idempotency-key",
    "anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "API_KEYS": USER_KEY,
        "ADMIN_API_KEYS": f"{ADMIN_KEY},{LIMITED_ADMIN_KEY}",
        "DEFAULT_RATE_LIMIT": str(LIMITED_N),
        "API_KEY_LIMITS": f"{USER_KEY}:100000,{ADMIN_KEY}:100000",
        "CORS_ORIGINS": ORIGIN,
        "BODY_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT_S),
        "MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "RATE_LIMIT_STORAGE_URI": "memory://",
        "MAX_TOKENS_LIMIT": "8",
    }
    with running_server(tmp_path_factory.mktemp("edge"), env, name="edge") as srv:
        yield srv


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response, read within the socket's timeout (a server that never answers fails here)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def assert_openai_error(body: bytes, code: str) -> None:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["type"] == "invalid_request_error"


# --- 405 on public paths, before the body --------------------------------------------------


@pytest.mark.parametrize("key", [None, USER_KEY, "sk-edge-wrong"])
def test_public_paths_answer_405_to_other_methods_before_the_body(server: Server, key: str | None) -> None:
    auth = bearer(key) if key else {}
    for path in sorted(public_paths(protect_metrics=False)):
        # A large announced body that never comes: the answer must not wait for it.
        with connect(server) as sock:
            sock.sendall(request_head("POST", path, {**auth, "content-type": "application/json",
                                                     "content-length": "500000"}))
            status, headers, body = read_response(sock)
        assert status == 405, (path, status, body[:200])
        assert_openai_error(body, "method_not_allowed")
        assert headers["allow"] == "GET, HEAD"
        for method in ("PUT", "DELETE", "PATCH"):
            response = httpx.request(method, f"{server.url}{path}", headers=auth, content=b"{}", timeout=WAIT_S)
            assert response.status_code == 405, (method, path)
        assert httpx.get(f"{server.url}{path}", headers=auth, timeout=WAIT_S).status_code in (200, 503)


# --- 431 -------------------------------------------------------------------------------------


def test_oversized_headers_get_431_before_auth(server: Server) -> None:
    padding = {"x-padding": "a" * (MAX_HEADER_BYTES + 100)}
    refused = httpx.get(f"{server.url}/v1/models", headers=padding, timeout=WAIT_S)
    assert refused.status_code == 431, refused.text[:200]
    assert_openai_error(refused.content, "headers_too_large")
    assert refused.headers["x-request-id"]
    fits = {"x-padding": "a" * (MAX_HEADER_BYTES // 2)}
    assert httpx.get(f"{server.url}/v1/models", headers={**bearer(USER_KEY), **fits}, timeout=WAIT_S).status_code == 200


# --- 408 and 499 -----------------------------------------------------------------------------


def test_slow_body_gets_408_and_the_connection_is_closed(server: Server) -> None:
    headers = {**bearer(USER_KEY), "content-type": "application/json", "content-length": "200"}
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(request_head("POST", "/v1/chat/completions", headers) + b'{"messages": [')
        status, response_headers, body = read_response(sock)
        waited = time.monotonic() - started
        assert status == 408, body[:200]
        assert_openai_error(body, "request_timeout")
        assert response_headers.get("connection") == "close"
        # The setting, not something shorter, decided it.
        assert waited >= READ_TIMEOUT_S * 0.9
        assert sock.recv(1024) == b""  # closed by the server: the rest is not read as a request


def in_progress(server: Server, path: str) -> float:
    """BentoML's own in-progress gauge for `path` (it sits outside our middleware)."""
    text = httpx.get(f"{server.url}/metrics", timeout=WAIT_S).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("bentoml_service_request_in_progress{") and f'endpoint="{path}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_client_disconnect_mid_body_is_answered_and_logged_as_499(server: Server) -> None:
    path = "/v1/completions"  # a route of ours: BentoML's gauge labels it by name
    rid = f"edge-disconnect-{uuid.uuid4().hex[:12]}"
    headers = {**bearer(USER_KEY), "content-type": "application/json", "content-length": "1000", "x-request-id": rid}
    with connect(server) as sock:
        sock.sendall(request_head("POST", path, headers) + b'{"messages": [')
        # Wait until the server is inside the request (its own gauge says so), then leave.
        deadline = time.monotonic() + WAIT_S
        while (inside := in_progress(server, path)) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert inside >= 1
    deadline = time.monotonic() + WAIT_S
    records: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        records = [json.loads(line) for line in server.log().splitlines() if rid in line and line.startswith("{")]
        if records:
            break
        time.sleep(0.2)
    assert [record["status"] for record in records] == [499], records
    assert records[0]["error_type"] == "client_closed_request"
    # Something was sent, so BentoML's TimeoutMiddleware let go at once (before: it held the
    # request for traffic.timeout, 3600 s).
    deadline = time.monotonic() + WAIT_S
    while in_progress(server, path) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert in_progress(server, path) == 0


# --- 429 headers, limits beyond /v1/ ---------------------------------------------------------


def test_debug_runtime_is_rate_limited_and_429_carries_the_ratelimit_headers(server: Server) -> None:
    url = f"{server.url}/debug/runtime"
    remaining = []
    for _ in range(LIMITED_N):
        ok = httpx.get(url, headers=bearer(LIMITED_ADMIN_KEY), timeout=WAIT_S)
        assert ok.status_code == 200, ok.text[:200]
        assert ok.headers["x-ratelimit-limit-requests"] == str(LIMITED_N)
        remaining.append(int(ok.headers["x-ratelimit-remaining-requests"]))
    assert remaining == list(range(LIMITED_N - 1, -1, -1))
    refused = httpx.get(url, headers=bearer(LIMITED_ADMIN_KEY), timeout=WAIT_S)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == str(LIMITED_N)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    assert int(refused.headers["retry-after"]) >= 1
    # Probes are never limited.
    for _ in range(LIMITED_N + 1):
        probe = httpx.get(f"{server.url}/livez", headers=bearer(LIMITED_ADMIN_KEY), timeout=WAIT_S)
        assert probe.status_code == 200 and "x-ratelimit-limit-requests" not in probe.headers


# --- admin keys ------------------------------------------------------------------------------


def test_debug_runtime_needs_an_admin_key_and_shows_no_secret(server: Server) -> None:
    url = f"{server.url}/debug/runtime"
    assert httpx.get(url, timeout=WAIT_S).status_code == 401
    denied = httpx.get(url, headers=bearer(USER_KEY), timeout=WAIT_S)
    assert denied.status_code == 403
    assert_openai_error(denied.content, "permission_denied")
    allowed = httpx.get(url, headers=bearer(ADMIN_KEY), timeout=WAIT_S)
    assert allowed.status_code == 200
    for secret in (USER_KEY, ADMIN_KEY, LIMITED_ADMIN_KEY):
        assert secret not in allowed.text
    assert allowed.json()["settings"]["auth"]["admin_api_keys"] == "<2 keys>"
    # An admin key is an API key too.
    assert httpx.get(f"{server.url}/v1/models", headers=bearer(ADMIN_KEY), timeout=WAIT_S).status_code == 200


# --- CORS ------------------------------------------------------------------------------------


def test_cors_preflight_allows_the_openai_sdk_headers(server: Server) -> None:
    preflight = httpx.options(
        f"{server.url}/v1/chat/completions",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": ",".join(("authorization", "content-type", *SDK_HEADERS)),
        },
        timeout=WAIT_S,
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert all(name in allowed for name in SDK_HEADERS)


# --- bad edge settings stop `bentoml serve` -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "hidden"),
    [
        ("CORS_ORIGINS", "*,https://edge.example.com", None),
        ("API_KEY_LIMITS", "sk-edge-zero-limit:0", "sk-edge-zero-limit"),
        ("API_KEY_LIMITS", "sk-edge-bare-secret-key", "sk-edge-bare-secret-key"),
    ],
)
def test_bad_edge_setting_stops_serve_with_one_line(name: str, value: str, hidden: str | None) -> None:
    env = {**os.environ, name: value, "BENTOML_CONFIG": str(ROOT / "configuration.yaml")}
    process = subprocess.Popen(
        [BENTOML, "serve", "service:LLMService", "--port", str(free_port()), "--host", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        # It started instead of refusing: take down everything it started (BentoML's
        # workers and vLLM's engine run in sessions of their own).
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.communicate(timeout=30)
        pytest.fail(f"{name}={value!r} did not stop bentoml serve")
    assert process.returncode == 2
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"invalid setting {name}"), lines
    if hidden:
        assert hidden not in stdout + stderr
