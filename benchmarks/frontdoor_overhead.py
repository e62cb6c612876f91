"""Added latency of the front door (request id, access log without metrics or logging,
CORS, header limit, methods, auth, rate limit, body limit, admission) per request, measured
in-process on ASGI calls, A/B interleaved. Figures committed before FrontDoor.build (which
always adds the access-log layer) were measured without it.

    .venv/bin/python benchmarks/frontdoor_overhead.py [--requests 20000] [--redis redis://...]

No HTTP and no engine: the same trivial downstream app is called bare (A) and behind the
front door (B), alternating, so machine noise hits both; the difference of the medians is
the cost of our middleware.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.core.settings import LimitSettings  # noqa: E402
from components.edge.front_door import FrontDoor  # noqa: E402
from components.edge.keys import Policy  # noqa: E402
from components.edge.keys_file import PolicySource  # noqa: E402
from components.edge.ratelimit import RateLimiter  # noqa: E402
from components.serving.admission import Admission  # noqa: E402

KEY = "sk-bench-0123456789"
BODY = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).encode()


def make_downstream(admission: Admission | None):  # type: ignore[no-untyped-def]
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        await receive()
        slot = await admission.acquire() if admission else None
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})
        if slot:
            slot.release()

    return app


async def call(app, headers):  # type: ignore[no-untyped-def]
    scope = {
        "type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers,
        "client": ("127.0.0.1", 5000), "query_string": b"", "http_version": "1.1", "scheme": "http",
        "server": ("127.0.0.1", 8080), "root_path": "",
    }
    sent = False

    async def receive():  # type: ignore[no-untyped-def]
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message):  # type: ignore[no-untyped-def]
        return None

    started = time.perf_counter_ns()
    await app(scope, receive, send)
    return (time.perf_counter_ns() - started) / 1000  # microseconds


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def main(requests: int, storage: str) -> dict[str, object]:
    limits = LimitSettings(DEFAULT_RATE_LIMIT="100000000", TOKENS_PER_MINUTE_LIMIT="100000000",  # type: ignore[arg-type]
                           RATE_LIMIT_STORAGE_URI=storage)
    bare = make_downstream(None)
    full = FrontDoor(
        keys=PolicySource(Policy.from_env((KEY, "sk-other-1", "sk-other-2"))),
        limiter=RateLimiter(limits),
        cors_origins=("*",),
        max_request_bytes=1 << 20,
    ).build(make_downstream(Admission(32, 50)))
    headers = [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json"),
               (b"content-length", str(len(BODY)).encode()), (b"origin", b"https://a.example")]
    for _ in range(500):  # warm-up
        await call(bare, headers)
        await call(full, headers)
    a: list[float] = []
    b: list[float] = []
    for _ in range(requests):
        a.append(await call(bare, headers))
        b.append(await call(full, headers))
    return {
        "storage": storage.split("://")[0],
        "requests": requests,
        "bare_p50_us": round(statistics.median(a), 1),
        "front_door_p50_us": round(statistics.median(b), 1),
        "added_p50_us": round(statistics.median(b) - statistics.median(a), 1),
        "added_p99_us": round(pct(b, 99) - pct(a, 99), 1),
        "machine": f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--redis", default=None, help="also measure with this Redis URI")
    parser.add_argument("--out", default="docs/benchmarks/frontdoor.json")
    options = parser.parse_args()
    results = [asyncio.run(main(options.requests, "memory://"))]
    if options.redis:
        results.append(asyncio.run(main(max(2000, options.requests // 5), options.redis)))
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(results, indent=2) + "\n")
    for row in results:
        print(json.dumps(row))
