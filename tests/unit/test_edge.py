"""Edge hygiene of the front door: methods on public paths, header and body-read limits,
client disconnects, 429 headers, admin keys, secret redaction, CORS and key-limit settings.
The middleware is driven directly with fake ASGI receive/send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from components.core.errors import RateLimited
from components.edge.front_door import FrontDoor
from components.edge.keys import Policy
from components.edge.keys_file import PolicySource
from components.edge.ledger import TokenLimits
from components.edge.middleware import BodyLimitMiddleware
from components.edge.ratelimit import RateLimiter
from components.core.redact import redact_uri as _redact_uri
from components.core.redact import redacted
from components.core.routes import public_paths
from components.core.settings import LimitSettings
from components.core.settings_env import SettingsError, load_settings

USER, OTHER, ADMIN = "sk-user-1111", "sk-other-2222", "sk-admin-3333"
STAINLESS = (
    "x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-runtime, "
    "x-stainless-runtime-version, x-stainless-retry-count, x-stainless-timeout, x-stainless-async, "
    "x-stainless-helper-method, openai-beta, traceparent, tracestate, baggage, idempotency-key, "
    "anthropic-version, anthropic-beta, anthropic-dangerous-direct-browser-access"
)


@dataclass
class Exchange:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    reached_app: bool
    receives: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)

    def error(self) -> dict[str, Any]:
        document = json.loads(self.body)
        assert set(document["error"]) == {"message", "type", "param", "code"}
        return document["error"]


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    scope["state"]["reached"] = True
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def body_messages(*chunks: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """receive() giving `chunks` (the last one ends the body), then waiting like a live connection."""
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def call(
    app: Any,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    receive: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> Exchange:
    sent: list[dict[str, Any]] = []
    counted = {"n": 0}
    source = receive or body_messages(b"")

    async def counting_receive() -> dict[str, Any]:
        counted["n"] += 1
        return await source()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http", "method": method, "path": path, "headers": headers or [], "client": ("127.0.0.1", 5000),
        "query_string": b"", "state": {},
    }
    # Bounded: a middleware that waits for a body that never comes fails here, not hangs.
    asyncio.run(asyncio.wait_for(app(scope, counting_receive, send), timeout=10))
    assert sent, "no response was sent"
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return Exchange(start["status"], dict(start["headers"]), body, bool(scope["state"].get("reached")),
                    counted["n"], sent)


def front_door(keys: tuple[str, ...] = (USER, OTHER), admin: tuple[str, ...] = (ADMIN,), **options: Any) -> Any:
    limits = LimitSettings(**options.pop("limits", {}))
    return FrontDoor(
        keys=PolicySource(Policy.from_env(keys, admin, limits.api_key_limits)),
        limiter=RateLimiter(limits),
        cors_origins=options.pop("cors_origins", ("https://app.example.com",)),
        max_request_bytes=1_048_576,
        **options,
    ).build(ok_app)


def bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode())]


# --- 405 on public paths, before the body ------------------------------------------


@pytest.mark.parametrize("path", sorted(public_paths(protect_metrics=False)))
@pytest.mark.parametrize("key", [None, USER, "sk-wrong"])
def test_public_paths_refuse_other_methods_before_reading_the_body(path: str, key: str | None) -> None:
    app = front_door()
    headers = [(b"content-length", b"500000"), *(bearer(key) if key else [])]
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        exchange = call(app, method, path, headers, receive=body_messages())  # no body ever comes
        assert exchange.status == 405, (method, path)
        assert exchange.error()["code"] == "method_not_allowed"
        assert exchange.headers[b"allow"] == b"GET, HEAD"
        assert exchange.receives == 0 and not exchange.reached_app


def test_public_paths_still_answer_get_and_head_and_auth_off_too() -> None:
    for app in (front_door(), front_door(keys=(), admin=())):
        for method in ("GET", "HEAD"):
            assert call(app, method, "/livez").status == 200
        assert call(app, "POST", "/readyz", receive=body_messages()).status == 405


def test_protected_metrics_is_not_public() -> None:
    exchange = call(front_door(protect_metrics=True), "POST", "/metrics", receive=body_messages())
    assert exchange.status == 401


# --- 431, 408, 499 ------------------------------------------------------------------


def test_oversized_headers_get_431_before_auth() -> None:
    big = [(b"x-padding", b"a" * 20_000)]
    exchange = call(front_door(), "GET", "/v1/models", big)  # no key: 431 comes before the 401
    assert exchange.status == 431 and exchange.error()["code"] == "headers_too_large"
    small = front_door(max_header_bytes=1024)
    assert call(small, "GET", "/v1/models", [*bearer(USER), (b"x-padding", b"a" * 900)]).status == 200
    assert call(small, "GET", "/v1/models", [*bearer(USER), (b"x-padding", b"a" * 1100)]).status == 431


def test_slow_body_gets_408_and_closes_the_connection() -> None:
    app = BodyLimitMiddleware(ok_app, 1024, read_timeout_s=0.05)
    exchange = call(app, "POST", "/v1/completions", [(b"content-length", b"100")], receive=body_messages())
    assert exchange.status == 408 and exchange.error()["code"] == "request_timeout"
    assert exchange.headers[b"connection"] == b"close"
    assert not exchange.reached_app
    # A timely body in several chunks still goes through.
    ok = call(app, "POST", "/v1/completions", receive=body_messages(b'{"a"', b": 1}"))
    assert ok.status == 200 and ok.reached_app


def test_client_disconnect_mid_body_still_sends_a_499() -> None:
    """BentoML's TimeoutMiddleware waits for a first send(): returning without one parks the
    request for traffic.timeout."""
    pending = [{"type": "http.request", "body": b'{"mess', "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    exchange = call(front_door(), "POST", "/v1/chat/completions", bearer(USER), receive=receive)
    assert exchange.status == 499 and exchange.error()["code"] == "client_closed_request"
    # The body limit's own answer, not the access log's safety net behind it.
    assert "during the body" in exchange.error()["message"]
    assert not exchange.reached_app


# --- 429 headers, limits on every non-public route ------------------------------------


def test_429_carries_the_x_ratelimit_headers() -> None:
    app = front_door(limits={"DEFAULT_RATE_LIMIT": "2"})
    for _ in range(2):
        assert call(app, "GET", "/v1/models", bearer(USER)).status == 200
    refused = call(app, "GET", "/v1/models", bearer(USER))
    assert refused.status == 429
    assert refused.headers[b"x-ratelimit-limit-requests"] == b"2"
    assert refused.headers[b"x-ratelimit-remaining-requests"] == b"0"
    assert refused.headers[b"x-ratelimit-reset-requests"].endswith(b"s")
    assert int(refused.headers[b"retry-after"]) >= 1


def test_token_429_carries_request_and_token_headers() -> None:
    async def scenario() -> None:
        rl = RateLimiter(LimitSettings(DEFAULT_RATE_LIMIT="10", TOKENS_PER_MINUTE_LIMIT="50"))  # type: ignore[arg-type]
        hold = await rl.ledger.reserve("k", 50, TokenLimits(per_minute=50))
        await hold.settle(50)
        with pytest.raises(RateLimited) as info:
            await rl.admit("k")
        headers = info.value.headers
        assert headers["x-ratelimit-remaining-tokens"] == "0" and headers["x-ratelimit-limit-tokens"] == "50"
        assert headers["x-ratelimit-limit-requests"] == "10"

    asyncio.run(scenario())


def test_a_refusal_from_inside_keeps_its_own_token_headers_once() -> None:
    """The token reservation's 429 comes from inside the app with fresher x-ratelimit-*-tokens
    values; seen: the front door appended its own too ('400, 400')."""

    async def refusing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"x-ratelimit-remaining-tokens", b"7")]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    app = FrontDoor(
        keys=PolicySource(Policy.from_env((USER,))),
        limiter=RateLimiter(LimitSettings(TOKENS_PER_MINUTE_LIMIT="400")),  # type: ignore[arg-type]
        cors_origins=("*",), max_request_bytes=1024,
    ).build(refusing_app)
    sent = call(app, "GET", "/v1/models", bearer(USER)).sent
    names = [name for name, _ in sent[0]["headers"]]
    assert names.count(b"x-ratelimit-remaining-tokens") == 1 and names.count(b"x-ratelimit-limit-tokens") == 1
    assert dict(sent[0]["headers"])[b"x-ratelimit-remaining-tokens"] == b"7"


def test_rate_limit_applies_to_every_non_public_route() -> None:
    app = front_door(limits={"DEFAULT_RATE_LIMIT": "1"})
    first = call(app, "GET", "/debug/runtime", bearer(ADMIN))
    assert first.status == 200 and first.headers[b"x-ratelimit-limit-requests"] == b"1"
    assert call(app, "GET", "/debug/runtime", bearer(ADMIN)).status == 429
    for _ in range(3):
        probe = call(app, "GET", "/livez", bearer(ADMIN))
        assert probe.status == 200 and b"x-ratelimit-limit-requests" not in probe.headers


# --- admin keys -----------------------------------------------------------------------


def test_debug_runtime_needs_an_admin_key() -> None:
    app = front_door()
    assert call(app, "GET", "/debug/runtime").status == 401
    denied = call(app, "GET", "/debug/runtime", bearer(USER))
    assert denied.status == 403 and denied.error()["code"] == "permission_denied" and not denied.reached_app
    assert call(app, "GET", "/debug/runtime", bearer(ADMIN)).status == 200
    # An admin key is an API key too.
    assert call(app, "GET", "/v1/models", bearer(ADMIN)).status == 200
    assert call(app, "GET", "/v1/models", bearer(USER)).status == 200


def test_admin_keys_alone_turn_auth_on_and_no_keys_leave_it_off() -> None:
    only_admin = front_door(keys=(), admin=(ADMIN,))
    assert call(only_admin, "GET", "/v1/models").status == 401
    assert call(only_admin, "GET", "/debug/runtime", bearer(ADMIN)).status == 200
    assert call(front_door(keys=(), admin=()), "GET", "/debug/runtime").status == 200


def test_admin_key_store_keeps_digests_only() -> None:
    store = Policy.from_env((USER,), (ADMIN, USER))
    assert ADMIN not in repr(store) and USER not in repr(store)
    assert len(store.digests) == 2
    admin, user = store.identify(ADMIN), store.identify(USER)
    assert admin is not None and user is not None
    assert admin.admin and user.admin
    assert not Policy.from_env((USER,), (ADMIN,)).identify(USER).admin  # type: ignore[union-attr]


# --- settings: secrets, CORS, key limits ------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "secret"),
    [
        ("redis://h:6379/0?password=s3cret", "s3cret"),
        ("redis://:pw-9x@h", "pw-9x"),
        ("redis://user:p@ss-7@h:6379/0", "ss-7"),
        ("redis://h:1/0?db=0&Password=zz-11&ssl_cert_reqs=none", "zz-11"),
        ("redis+unix:///tmp/r.sock?password=un1x", "un1x"),
        ("redis://:p?ss-w0rd@h/0", "ss-w0rd"),
        ("redis://h/0#fr4g", "fr4g"),
    ],
)
def test_redact_uri_hides_every_password(uri: str, secret: str) -> None:
    assert secret not in _redact_uri(uri)
    assert "h" in _redact_uri(uri).split("://", 1)[1] or "sock" in _redact_uri(uri)


def test_redact_uri_keeps_what_is_not_secret() -> None:
    assert _redact_uri("memory://") == "memory://"
    assert _redact_uri("redis://h:6379/0?db=0&password=x") == "redis://h:6379/0?db=0&password=***"
    assert _redact_uri("http://collector:4317") == "http://collector:4317"


def test_redacted_settings_show_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", f"{USER},{OTHER}")
    monkeypatch.setenv("ADMIN_API_KEYS", ADMIN)
    monkeypatch.setenv("API_KEY_LIMITS", f"{USER}:10")
    monkeypatch.setenv("RATE_LIMIT_STORAGE_URI", "redis://:pw-top@h:6379/0?password=s3cret")
    settings = load_settings()
    assert settings.auth.admin_api_keys == (ADMIN,)
    assert ADMIN not in repr(settings)
    text = json.dumps(redacted(settings))
    for secret in (USER, OTHER, ADMIN, "pw-top", "s3cret"):
        assert secret not in text
    shown = redacted(settings)
    assert shown["auth"]["admin_api_keys"] == "<1 keys>" and shown["auth"]["api_keys"] == "<2 keys>"
    assert shown["server"]["max_header_bytes"] == 16384 and shown["server"]["body_read_timeout_s"] == 10


def fails_with(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert name in message and "\n" not in message
    assert capsys.readouterr().err.strip() == message
    return message


def test_cors_star_mixed_with_origins_is_a_startup_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = fails_with(monkeypatch, capsys, "CORS_ORIGINS", "*,https://app.example.com")
    assert "'*' alone" in message
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    assert load_settings().limits.cors_origins == ("https://a.example", "https://b.example")


def test_key_limit_zero_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    message = fails_with(monkeypatch, capsys, "API_KEY_LIMITS", "sk-zero-limit-key:0")
    assert "at least 1" in message and "sk-zero-limit-key" not in message


def test_key_limit_without_limit_does_not_print_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = fails_with(monkeypatch, capsys, "API_KEY_LIMITS", "sk-ok:5,sk-something-secret")
    assert "sk-something-secret" not in message and "sk-ok" not in message
    assert "key:limit" in message


def test_cors_preflight_allows_the_openai_sdk_headers() -> None:
    origin = "https://app.example.com"
    headers = [
        (b"origin", origin.encode()),
        (b"access-control-request-method", b"POST"),
        (b"access-control-request-headers", f"authorization, content-type, {STAINLESS}".encode()),
    ]
    exchange = call(front_door(), "OPTIONS", "/v1/chat/completions", headers)
    assert exchange.status == 200, exchange.body
    assert exchange.headers[b"access-control-allow-origin"] == origin.encode()
    assert not exchange.reached_app


def test_bad_storage_uri_is_reported_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = fails_with(monkeypatch, capsys, "RATE_LIMIT_STORAGE_URI", "ftp://admin:hunter2-pw@h/0")
    assert "hunter2-pw" not in message
