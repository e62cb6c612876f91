"""The vLLM internals the service reads: found, or reported loudly when a vLLM upgrade
moved them (never a silent default)."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import typing
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


def set_on_instances(cls: type, name: str) -> bool:
    """`name` is there on `cls`'s instances: a dataclass field, a class attribute (property,
    method), or a `self.<name> =` / `self.<name>: ...` line in vLLM's source of the class."""
    if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
        return True
    if any(name in vars(klass) for klass in cls.__mro__):
        return True
    assignment = re.compile(rf"\bself\.{name}\s*(?::|=(?!=))")
    return any(assignment.search(inspect.getsource(klass)) for klass in cls.__mro__
               if klass.__module__.startswith("vllm."))


def test_the_paths_read_are_in_the_installed_vllm() -> None:
    """Canary against the installed vLLM (not a stand-in): each step of each path the
    adapter reads is set on the class that step reaches in vLLM's own source."""
    from multiprocessing.process import BaseProcess

    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.core_client import BackgroundResources, EngineCoreClient, MPClient
    from vllm.v1.engine.output_processor import OutputProcessor
    from vllm.v1.engine.utils import CoreEngineProcManager

    # What AsyncLLM builds its parts with, and what those builders give.
    built = inspect.getsource(AsyncLLM.__init__)
    assert "self.engine_core = EngineCoreClient.make_async_mp_client(" in built
    assert "self.output_processor = OutputProcessor(" in built
    client = typing.get_type_hints(EngineCoreClient.make_async_mp_client)["return"]
    assert issubclass(client, MPClient)
    client_source = inspect.getsource(MPClient.__init__)
    assert "self.resources = BackgroundResources(" in client_source
    # The field defaults to None: the pids are there only if the client fills it in.
    assert "self.resources.engine_manager = " in client_source
    assert CoreEngineProcManager in typing.get_args(typing.get_type_hints(BackgroundResources)["engine_manager"])
    assert "self.processes: list[BaseProcess]" in inspect.getsource(CoreEngineProcManager.__init__)
    assert isinstance(inspect.getattr_static(BaseProcess, "pid"), property)

    walks = {
        engine.PIDS_PATH: [AsyncLLM, client, BackgroundResources, CoreEngineProcManager],
        engine.UNFINISHED_PATH: [AsyncLLM, OutputProcessor],
        engine.ERRORED_PATH: [AsyncLLM],
    }
    for path, classes in walks.items():
        parts = path.split(".")
        assert len(parts) == len(classes), path
        missing = [f"{cls.__name__}.{part}" for cls, part in zip(classes, parts, strict=True)
                   if not set_on_instances(cls, part)]
        assert missing == [], f"{path}: not in vLLM {__import__('vllm').__version__}: {missing}"
    assert isinstance(inspect.getattr_static(AsyncLLM, "errored"), property)
    # The count the adapter calls, on vLLM's own object.
    assert OutputProcessor(None, log_stats=False).get_num_unfinished_requests() == 0


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
