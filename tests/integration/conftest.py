from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import redis

from harness.otlp_receiver import OtlpReceiver
from harness.server import Server, free_port, running_server

MAIN_KEY = "sk-test-main-4f1c9a"
LIMITED_KEY = "sk-test-limited-77b2e0"
TOKENS_KEY = "sk-test-tokens-a93d11"
RETRY_KEY = "sk-test-retry-5c8e42"
SHARED_KEY = "sk-test-shared-0d6b31"
ALL_KEYS = (MAIN_KEY, LIMITED_KEY, TOKENS_KEY, RETRY_KEY, SHARED_KEY)
LIMITED_N = 3
WINDOW_MINUTES = 0.25  # 15 s windows keep the retry test short
TOKENS_PER_MINUTE = 100_000
MAX_NUM_SEQS = 4
MAX_QUEUE_SIZE = 4


@contextmanager
def running_redis(workdir: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real redis-server on a free loopback port (`extra`: more of its arguments), stopped
    by its PID at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (make test installs it with apt-get)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir),
         *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    try:
        yield url, process
    finally:
        process.send_signal(signal.SIGCONT)  # a test may have paused it: SIGTERM would wait
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    """Where the main server exports its traces (OTLP over HTTP, on loopback)."""
    with OtlpReceiver() as receiver:
        yield receiver


def main_server_env(redis_url: str, traces_url: str) -> dict[str, str]:
    return {
        # Every request of the main suite is traced (tests/integration/test_tracing.py).
        "OTLP_TRACES_ENDPOINT": traces_url,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "TRACES_SAMPLE_RATIO": "1",
        "MAX_NUM_SEQS": str(MAX_NUM_SEQS),
        "MAX_QUEUE_SIZE": str(MAX_QUEUE_SIZE),
        # The backpressure tests fill the whole queue from one key; the per-key shares have
        # tests of their own (test_hardening.py).
        "MAX_QUEUED_PER_KEY": str(MAX_QUEUE_SIZE),
        # Queued requests wait for whole waves of streams here: a slow host must not turn
        # that wait into a 503 (the bounded wait has a unit test and the soak's 10 s).
        "QUEUE_TIMEOUT_SECONDS": "300",
        "API_KEYS": ",".join(ALL_KEYS),
        "ADMIN_API_KEYS": MAIN_KEY,
        "API_KEY_LIMITS": f"{MAIN_KEY}:100000,{LIMITED_KEY}:{LIMITED_N},{RETRY_KEY}:1,{TOKENS_KEY}:1000,{SHARED_KEY}:{LIMITED_N}",
        "DEFAULT_RATE_LIMIT": "50",
        "RATE_LIMIT_WINDOW_MINUTES": str(WINDOW_MINUTES),
        "TOKENS_PER_MINUTE_LIMIT": str(TOKENS_PER_MINUTE),
        "RATE_LIMIT_STORAGE_URI": redis_url,
        "CORS_ORIGINS": "https://app.example.com",
        "MAX_REQUEST_BYTES": "65536",
    }


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str, otlp: OtlpReceiver) -> Iterator[Server]:
    """One real service (bentoml serve + vLLM + the bundled model) for the whole session."""
    log_dir: Path = tmp_path_factory.mktemp("server")
    with running_server(log_dir, env=main_server_env(redis_url, otlp.url)) as srv:
        yield srv
    # After a whole session of traffic, SIGTERM still drains and exits cleanly.
    assert srv.process.returncode == 0, srv.log()[-3000:]


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=MAIN_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"authorization": f"Bearer {MAIN_KEY}"}


@pytest.fixture(scope="session")
def http(server: Server, auth: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=auth, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def served_model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id
