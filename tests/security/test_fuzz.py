"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis),
with a valid key: no 5xx, bounded in examples and time."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.security.conftest import KEY


@pytest.fixture(scope="session")
def api_schema(server):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(headers={"authorization": f"Bearer {KEY}"}, checks=[not_a_server_error], timeout=120)
