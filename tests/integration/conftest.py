from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.server import Server, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real service (bentoml serve + vLLM + the bundled model) for the whole session."""
    log_dir: Path = tmp_path_factory.mktemp("server")
    srv = start_server(log_dir, env={"MAX_NUM_SEQS": "8"})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def served_model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id
