"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis),
with a valid key: no 5xx, bounded in examples and time.

Schemathesis' pytest plugin does not work with pytest 9 yet, so its Hypothesis strategies
are driven directly, one operation after the other."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.security.conftest import KEY

EXAMPLES = 40


@pytest.fixture(scope="module")
def operations(server):  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_has_our_operations(operations) -> None:  # type: ignore[no-untyped-def]
    labels = {op.label for op in operations}
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models", "POST /tokenize",
            "POST /detokenize", "POST /v1/messages", "POST /v1/messages/count_tokens", "POST /v1/responses",
            "GET /v1/responses/{response_id}", "DELETE /v1/responses/{response_id}"} <= labels


def test_no_server_errors(operations, server) -> None:  # type: ignore[no-untyped-def]
    failures: list[str] = []
    for operation in operations:

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(
                base_url=server.url, headers={"authorization": f"Bearer {KEY}"},
                checks=[not_a_server_error], timeout=120,
            )

        try:
            fuzz()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure
            failures.append(f"{operation.label}: {str(exc)[:2000]}")
    assert not failures, "\n\n".join(failures)
