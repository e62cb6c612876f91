from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.server import Server, running_server

KEY = "sk-security-suite-5e6f7a"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Keys on; generations kept short so that fuzzing stays bounded in time."""
    env = {
        "API_KEYS": KEY,
        "API_KEY_LIMITS": f"{KEY}:1000000",
        "MAX_TOKENS_LIMIT": "16",
        "MAX_N": "2",
        "MAX_NUM_SEQS": "8",
        "MAX_QUEUE_SIZE": "64",
        "MAX_REQUEST_BYTES": "262144",
        "REQUEST_TIMEOUT_SECONDS": "60",
    }
    with running_server(tmp_path_factory.mktemp("security"), env, name="security") as srv:
        yield srv
