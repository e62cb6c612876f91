"""components/core/priority.py: the classes' arithmetic, and that every fact it holds (the
class names and numbers, aging, vLLM's number, the engine's class tag) is defined there only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from components.core import priority
from components.core.priority import (
    BATCH,
    CLASS_STEP,
    CLASSES,
    INTERACTIVE,
    STANDARD,
    aged_level,
    engine_priority,
    engine_step_ms,
    is_batch,
    request_level,
)

COMPONENTS = Path(__file__).resolve().parents[2] / "components"
HOME = "core/priority.py"
# A constant named like one of these, bound to a number, is a priority number.
PRIORITY_NAME = re.compile(r"PRIORITY|INTERACTIVE|STANDARD|BATCH|^_?LOW$|^_?CLASS")


def top_level_names(tree: ast.Module) -> dict[str, int]:
    """The names a module defines at its top level (not those it imports), with their line."""
    found: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = node.lineno
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    found[name.id] = node.lineno
    return found


def numbers_named_as_priorities(tree: ast.Module) -> dict[str, int]:
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)]
        values = [value for value in ast.walk(node.value) if isinstance(value, ast.Constant)]
        if any(isinstance(value.value, int) and not isinstance(value.value, bool) for value in values):
            found |= {name: node.lineno for name in names if PRIORITY_NAME.search(name)}
    return found


def defined_twice(components: Path) -> list[str]:
    """Where a module other than core/priority.py defines what that module defines: one of
    its names, a class name or the class tag as a string, or a number named as a priority."""
    home = ast.parse((components / HOME).read_text())
    names = {name for name in top_level_names(home) if not name.startswith("_")}
    strings = {repr(name) for name in CLASSES} | {repr(priority.CLASS_ARG)}
    found = []
    for path in sorted(components.glob("*/*.py")):
        where = str(path.relative_to(components))
        if where == HOME:
            continue
        tree = ast.parse(path.read_text())
        hits = {name: line for name, line in top_level_names(tree).items() if name in names}
        hits |= numbers_named_as_priorities(tree)
        hits |= {repr(node.value): node.lineno for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and repr(node.value) in strings}
        found += [f"{where}:{line} {what}" for what, line in hits.items()]
    return found


def test_every_priority_fact_is_defined_once() -> None:
    assert defined_twice(COMPONENTS) == []


def test_the_classes_in_order() -> None:
    assert list(CLASSES.values()) == sorted(CLASSES.values()) == [INTERACTIVE, STANDARD, BATCH]
    assert STANDARD - INTERACTIVE == BATCH - STANDARD == CLASS_STEP
    assert [is_batch(level) for level in (INTERACTIVE, STANDARD, BATCH - 1, BATCH, BATCH + 7)] == [
        False, False, False, True, True]


def test_a_request_may_lower_its_priority_never_raise_it() -> None:
    assert request_level(None, STANDARD) == STANDARD
    assert request_level(INTERACTIVE, STANDARD) == STANDARD  # asks for more than its key has
    assert request_level(-1000, BATCH) == BATCH
    assert request_level(BATCH + 3, STANDARD) == BATCH + 3  # a key's own request lowered


@given(level=st.integers(0, 100), waited=st.floats(0, 1e6), aging=st.floats(0.01, 1e4))
def test_aging_raises_one_class_per_step_and_stops_at_interactive(level: int, waited: float, aging: float) -> None:
    aged = aged_level(level, waited, aging)
    assert INTERACTIVE <= aged <= level
    assert aged == max(INTERACTIVE, level - CLASS_STEP * int(waited / aging))
    assert aged_level(level, waited + aging, aging) <= aged  # never falls back
    assert aged_level(level, waited, 0) == level  # 0: never ages


@given(arrived=st.integers(0, 2**62), level=st.integers(-10, 10**30), rank=st.integers(-10, 10**30),
       class_ms=st.integers(0, 10**12), rank_ms=st.integers(0, 10**12))
def test_vllms_number_stays_an_int64_and_grows_with_each_term(arrived: int, level: int, rank: int, class_ms: int,
                                                                rank_ms: int) -> None:
    value = engine_priority(arrived, level, rank, class_ms, rank_ms)
    assert 0 <= value < 2**63
    assert engine_priority(arrived + 1, level, rank, class_ms, rank_ms) > value
    assert engine_priority(arrived, level + 1, rank, class_ms, rank_ms) >= value
    assert engine_priority(arrived, level, rank + 1, class_ms, rank_ms) >= value


@given(aging=st.floats(0.01, 3600), late_ms=st.integers(0, 10**7))
def test_in_vllms_queue_a_class_is_worth_one_aging_step(aging: float, late_ms: int) -> None:
    """A batch request goes after a standard one that arrived less than one aging step after
    it, and ahead of one that arrived later than that."""
    step = engine_step_ms(aging)
    batch = engine_priority(0, BATCH, 0, step, 0)
    standard = engine_priority(late_ms, STANDARD, 0, step, 0)
    assert (standard < batch) == (late_ms < CLASS_STEP * step)
    assert engine_step_ms(0) * CLASS_STEP > 10**9  # never aging: no arrival time crosses a class
