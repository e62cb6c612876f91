from __future__ import annotations

import pytest

from components.core.metrics import HIDDEN_KEY, Metrics


def key_ids(metrics: Metrics) -> set[str]:
    return {sample.labels["key_id"] for counter in (metrics.key_requests.metric, metrics.key_tokens.metric)
            for family in counter.collect() for sample in family.samples}


@pytest.mark.parametrize(("protected", "shown"), [(False, {HIDDEN_KEY}), (True, {"key-0123456789", "anonymous"})])
def test_per_key_series_name_keys_only_behind_a_key(protected: bool, shown: set[str]) -> None:
    """A public /metrics (PROTECT_METRICS unset) must not name tenants: every key counts as
    `hidden` there, and the totals stay."""
    metrics = Metrics(key_ids=protected)
    for kid in ("key-0123456789", "anonymous"):
        metrics.key_requests.labels(kid, "2xx").inc()
        metrics.key_tokens.labels(kid, "completion").inc(5)
    assert key_ids(metrics) == shown
    total = sum(s.value for f in metrics.key_tokens.metric.collect() for s in f.samples if s.name.endswith("_total"))
    assert total == 10
