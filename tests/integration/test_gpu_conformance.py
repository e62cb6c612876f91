"""The API conformance subset on a real GPU, against the service started with the GPU bento's
settings (bentofile.yaml: Mistral-7B-Instruct-v0.2-AWQ, float16, CUDA graphs). Run by
`make gpu-check` (`pytest -m gpu`); skipped where NVML finds no GPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from components.vllm_adapter import gpu_preflight
from harness.gpu_check import KEY, bento_service_env
from harness.server import Server, start_server


def _gpus() -> int:
    try:
        import pynvml
    except ImportError:
        return 0
    return len(gpu_preflight.read_nvml(pynvml).gpus)


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_gpus() == 0, reason="needs an NVIDIA GPU (NVML found none)")]
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("gpu-server")
    cache = Path(os.environ.get("GPU_CHECK_CACHE") or logs / "cache")
    server = start_server(logs, env=bento_service_env(cache), name="gpu-service")
    try:
        server.wait_ready(timeout=3600)  # a first start downloads about 4 GB of weights
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(gpu_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gpu_server.url}/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def test_models_lists_the_bento_model(model: str) -> None:
    assert model == "TheBloke/Mistral-7B-Instruct-v0.2-AWQ"


def test_chat_answers_and_counts_tokens(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16, temperature=0)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_streaming_ends_with_usage(client: openai.OpenAI, model: str) -> None:
    chunks = list(client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions_and_logprobs(client: openai.OpenAI, model: str) -> None:
    reply = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4,
                                      temperature=0, logprobs=2)
    assert reply.choices[0].text.strip()
    assert reply.choices[0].logprobs is not None and reply.choices[0].logprobs.top_logprobs


def test_n_choices_are_sampled(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=8, n=2, temperature=1.0)
    assert sorted(choice.index for choice in reply.choices) == [0, 1]


def test_too_many_tokens_is_a_400_in_openai_shape(gpu_server: Server, model: str) -> None:
    response = httpx.post(f"{gpu_server.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                          json={"model": model, "messages": QUESTION, "max_tokens": 100_000}, timeout=60)
    assert response.status_code == 400
    assert set(response.json()["error"]) >= {"message", "type", "param", "code"}


def test_no_key_is_a_401(gpu_server: Server) -> None:
    response = httpx.get(f"{gpu_server.url}/v1/models", timeout=30)
    assert response.status_code == 401 and "error" in response.json()
