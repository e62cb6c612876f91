"""What a generation's admission is told besides its cost: whom it counts against, its
deadline and whether it may wait at all.

The deadline is arrival + the time-to-first-token objective: the key's own (`ttft_slo_ms`
in the keys file), else its class's (TTFT_SLO_MS_INTERACTIVE/STANDARD/BATCH), else none.
A client's `x-slo-ttft-ms` header may tighten it, never loosen it. A key marked `sheddable`
never waits in the fair queue. With keys off and GATEWAY_FAIRNESS_ID on, a gateway's
`x-gateway-inference-fairness-id` header names whom admission counts the request against
(with keys on, the key does, whatever the header says).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.core.errors import InvalidRequest
from components.core.priority import BATCH, INTERACTIVE, STANDARD
from components.core.settings import LimitSettings

SLO_HEADER = "x-slo-ttft-ms"
FAIRNESS_HEADER = "x-gateway-inference-fairness-id"
MAX_SLO_MS = 3_600_000
# Bounded: the id becomes a key of admission's tables while its requests run or wait.
_FAIRNESS_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
_SLO = re.compile(r"^[0-9]{1,7}$")


@dataclass(frozen=True)
class Terms:
    key: str  # whom admission counts it against
    deadline: float | None  # when it must have started, time.monotonic()'s scale; None: never too late
    sheddable: bool = False


def class_of(level: int) -> int:
    """The class a request's level falls in (a request may lower its own level by steps)."""
    return BATCH if level >= BATCH else STANDARD if level >= STANDARD else INTERACTIVE


def header_slo_ms(value: str | None) -> int | None:
    """The client's objective in whole milliseconds, 1 .. MAX_SLO_MS; anything else is a 400."""
    if value is None:
        return None
    value = value.strip()
    if not _SLO.match(value) or not 1 <= int(value) <= MAX_SLO_MS:
        raise InvalidRequest(f"The {SLO_HEADER} header must be a whole number of milliseconds from 1 to "
                             f"{MAX_SLO_MS}.", param=SLO_HEADER)
    return int(value)


@dataclass(frozen=True)
class Objectives:
    by_class: Mapping[int, int] = field(default_factory=dict)  # class level -> objective, ms
    fairness_header: bool = False  # keys off and GATEWAY_FAIRNESS_ID on

    @classmethod
    def from_settings(cls, limits: LimitSettings, keys_on: bool) -> Objectives:
        configured = {INTERACTIVE: limits.ttft_slo_ms_interactive, STANDARD: limits.ttft_slo_ms_standard,
                      BATCH: limits.ttft_slo_ms_batch}
        return cls({level: ms for level, ms in configured.items() if ms is not None},
                   limits.gateway_fairness_id and not keys_on)

    def objective_ms(self, policy: Any, level: int, header: str | None) -> int | None:
        """The key's objective, else its class's; the header's when tighter (or the only one)."""
        own = getattr(policy, "ttft_slo_ms", None)
        base = own if own is not None else self.by_class.get(class_of(level))
        asked = header_slo_ms(header)
        if asked is None:
            return base
        return asked if base is None else min(base, asked)

    def fairness_key(self, tenant: str, policy: Any, header: str | None) -> str:
        if not self.fairness_header or policy is not None or header is None or not _FAIRNESS_ID.match(header):
            return tenant
        return f"fairness:{header}"

    def terms(self, headers: Mapping[str, str], tenant: str, policy: Any, level: int, arrival: float) -> Terms:
        """`arrival`: when the request arrived, on time.monotonic()'s scale."""
        ms = self.objective_ms(policy, level, headers.get(SLO_HEADER))
        return Terms(self.fairness_key(tenant, policy, headers.get(FAIRNESS_HEADER)),
                     None if ms is None else arrival + ms / 1000, bool(getattr(policy, "sheddable", False)))


def arrival(started_perf: float) -> float:
    """A front-door perf_counter() reading on time.monotonic()'s scale (admission's clock)."""
    return time.monotonic() - (time.perf_counter() - started_perf)
