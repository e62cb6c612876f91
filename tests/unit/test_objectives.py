from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from components.core.context import request_context
from components.core.errors import InvalidRequest, Overloaded
from components.core.priority import BATCH, INTERACTIVE, STANDARD
from components.core.settings import LimitSettings
from components.edge.keys import KeyPolicy
from components.edge.keys_file import parse
from components.serving.objectives import FAIRNESS_HEADER, SLO_HEADER, Objectives, header_slo_ms

DIGEST = "a" * 64


def limits(**values: object) -> LimitSettings:
    return LimitSettings.model_validate(values)


def test_no_objective_configured_means_no_deadline() -> None:
    objectives = Objectives.from_settings(limits(), keys_on=True)
    terms = objectives.terms({}, "k", KeyPolicy("k"), STANDARD, arrival=100.0)
    assert terms.deadline is None and terms.key == "k" and not terms.sheddable


def test_the_class_default_the_keys_own_and_the_header_that_only_tightens() -> None:
    objectives = Objectives.from_settings(limits(TTFT_SLO_MS_INTERACTIVE="500", TTFT_SLO_MS_BATCH="20000"),
                                          keys_on=True)
    assert objectives.terms({}, "k", KeyPolicy("k"), INTERACTIVE, 100.0).deadline == pytest.approx(100.5)
    assert objectives.terms({}, "k", KeyPolicy("k"), BATCH + 3, 100.0).deadline == pytest.approx(120.0)
    assert objectives.terms({}, "k", KeyPolicy("k"), STANDARD, 100.0).deadline is None  # not configured
    own = KeyPolicy("k", ttft_slo_ms=2000)
    assert objectives.terms({}, "k", own, INTERACTIVE, 100.0).deadline == pytest.approx(102.0)  # the key's wins
    assert objectives.terms({SLO_HEADER: "300"}, "k", own, INTERACTIVE, 100.0).deadline == pytest.approx(100.3)
    assert objectives.terms({SLO_HEADER: "9000"}, "k", own, INTERACTIVE, 100.0).deadline == pytest.approx(102.0)
    # No objective at all: the client's is the only one.
    assert objectives.terms({SLO_HEADER: "250"}, "k", None, STANDARD, 100.0).deadline == pytest.approx(100.25)


@pytest.mark.parametrize("value", ["", "0", "-5", "1.5", "abc", "3600001", "1e3", "99999999999"])
def test_a_bad_slo_header_is_a_400_naming_it(value: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        header_slo_ms(value)
    assert info.value.status == 400 and info.value.param == SLO_HEADER


def test_the_fairness_id_names_the_tenant_only_when_enabled_and_keys_are_off() -> None:
    on = Objectives.from_settings(limits(GATEWAY_FAIRNESS_ID="true"), keys_on=False)
    assert on.terms({FAIRNESS_HEADER: "team-a"}, "anonymous", None, STANDARD, 0.0).key == "fairness:team-a"
    assert on.terms({}, "anonymous", None, STANDARD, 0.0).key == "anonymous"
    # Bounded: too long or of another charset, ignored (one tenant, as without the header).
    for bad in ("x" * 65, "a b", "ä", "a/b", ""):
        assert on.terms({FAIRNESS_HEADER: bad}, "anonymous", None, STANDARD, 0.0).key == "anonymous"
    off = Objectives.from_settings(limits(), keys_on=False)
    assert off.terms({FAIRNESS_HEADER: "team-a"}, "anonymous", None, STANDARD, 0.0).key == "anonymous"
    keys_on = Objectives.from_settings(limits(GATEWAY_FAIRNESS_ID="true"), keys_on=True)
    assert keys_on.terms({FAIRNESS_HEADER: "team-a"}, "k", KeyPolicy("k"), STANDARD, 0.0).key == "k"
    # Even were it built so, a request with a key is counted against its key.
    assert on.terms({FAIRNESS_HEADER: "team-a"}, "k", KeyPolicy("k"), STANDARD, 0.0).key == "k"


def test_the_keys_file_gives_a_key_its_objective_and_sheddable() -> None:
    policy = parse(f"keys:\n- id: fast\n  sha256: '{DIGEST}'\n  ttft_slo_ms: 800\n  sheddable: true\n"
                   f"- id: plain\n  sha256: '{'b' * 64}'\n", "keys.yaml")
    fast, plain = policy.by_id("fast"), policy.by_id("plain")
    assert fast is not None and fast.ttft_slo_ms == 800 and fast.sheddable
    assert plain is not None and plain.ttft_slo_ms is None and not plain.sheddable
    terms = Objectives().terms({}, "fast", fast, STANDARD, 10.0)
    assert terms.sheddable and terms.deadline == pytest.approx(10.8)
    with pytest.raises(ValueError, match="ttft_slo_ms"):
        parse(f"keys:\n- id: bad\n  sha256: '{DIGEST}'\n  ttft_slo_ms: 0\n", "keys.yaml")


def test_class_objectives_are_bounded_settings() -> None:
    with pytest.raises(ValueError):
        limits(TTFT_SLO_MS_STANDARD="0")
    assert limits().gateway_fairness_id is False and limits().ttft_slo_ms_standard is None


def response_for(headers: dict[str, str], objectives: Objectives, admission: Any = None) -> Any:
    from components.serving.admission import Admission
    from components.serving.breaker import CircuitBreaker
    from components.serving.generation import GenerationResponse
    from components.serving.lifecycle import Gate

    async def aborter(ids: Any) -> None:
        return None

    gate = Gate(admission or Admission(1, 1, 1.0), CircuitBreaker(), aborter, 0, objectives=objectives)
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
             "headers": [(name.encode(), value.encode()) for name, value in headers.items()]}
    # It arrived a while ago: the deadline counts from the front door, not from here.
    request_context(scope).started = time.perf_counter() - 5
    return GenerationResponse(SimpleNamespace(priority=STANDARD), Request(scope), None, gate,  # type: ignore[arg-type]
                              stall_timeout_s=1.0)


def test_a_generation_takes_its_terms_before_its_response_starts() -> None:
    objectives = Objectives.from_settings(limits(TTFT_SLO_MS_STANDARD="1000"), keys_on=True)
    with pytest.raises(InvalidRequest):  # raised in the route, so rendered in its dialect's error shape
        response_for({SLO_HEADER: "soon"}, objectives)
    terms = response_for({SLO_HEADER: "200"}, objectives).terms
    assert terms.key == "anonymous" and terms.deadline is not None and terms.deadline < time.monotonic() - 4


def test_the_gate_hands_deadline_and_sheddable_to_admission() -> None:
    from components.serving.admission import Admission

    async def scenario() -> None:
        admission = Admission(1, 4, 30.0)
        gate = response_for({}, Objectives(), admission).gate
        first = await gate.admit("a", 1, ("e1",))
        with pytest.raises(Overloaded):
            await gate.admit("s", 1, ("e2",), sheddable=True)
        with pytest.raises(Overloaded):
            await gate.admit("d", 1, ("e3",), deadline=time.monotonic())  # already due
        assert admission.waiting == 0
        first.abort(Overloaded("done"))

    asyncio.run(scenario())
