"""The vLLM internals the service reads: found, or reported loudly when a vLLM upgrade
moved them (never a silent default)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from components.vllm_adapter import engine


def fake_engine(pids: list[int], unfinished: int) -> SimpleNamespace:
    processes = [SimpleNamespace(pid=pid) for pid in pids]
    manager = SimpleNamespace(processes=processes)
    return SimpleNamespace(
        engine_core=SimpleNamespace(resources=SimpleNamespace(engine_manager=manager)),
        output_processor=SimpleNamespace(get_num_unfinished_requests=lambda: unfinished),
        errored=False,
    )


def test_reads_what_vllm_032_has() -> None:
    missing: list[str] = []
    fake = fake_engine([11, 12], 3)
    assert engine.engine_core_pids(fake, missing.append) == [11, 12]
    assert engine.unfinished_requests(fake, missing.append) == 3
    assert missing == []


def test_a_moved_internal_is_logged_once_and_counted_every_time(caplog: pytest.LogCaptureFixture) -> None:
    engine._reported.clear()
    missing: list[str] = []
    moved = SimpleNamespace(engine_core=SimpleNamespace(), errored=False)  # no resources, no output_processor
    with caplog.at_level(logging.ERROR, logger="components.vllm_adapter.engine"):
        assert engine.engine_core_pids(moved, missing.append) == []
        assert engine.engine_core_pids(moved, missing.append) == []
        assert engine.unfinished_requests(moved, missing.append) is None
    assert missing == [engine.PIDS_PATH, engine.PIDS_PATH, engine.UNFINISHED_PATH]
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 2 and "'resources'" in errors[0] and "upgraded" in errors[0]


def test_engine_dead_by_errored_flag_or_by_a_gone_pid() -> None:
    fake = fake_engine([], 0)
    assert not engine.engine_dead(fake, [])
    fake.errored = True
    assert engine.engine_dead(fake, [])
    assert engine.engine_dead(fake_engine([], 0), [2**22 + 12345])  # no such pid
