"""Checks each entry of internals.USED against the installed vLLM: it exists, where it is
called it takes the parameters the adapter passes, where it is an attribute some class in
its owner's hierarchy has or sets it. Run by tests/unit/test_vllm_canary.py; an upgrade
that renames one entry fails there, naming it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Iterable
from typing import Any

from components.vllm_adapter.internals import Internal


def problems(internals: Iterable[Internal]) -> list[str]:
    """One line per entry the installed vLLM does not have as the adapter uses it."""
    found: list[str] = []
    for internal in internals:
        where = f"{internal.module}.{internal.path} ({internal.use})"
        try:
            owner = internal.owner()
        except (ImportError, AttributeError) as exc:
            found.append(f"{where}: its owner is gone ({exc})")
            continue
        problem = _check(internal, owner)
        if problem is not None:
            found.append(f"{where}: {problem}")
    return found


def _check(internal: Internal, owner: Any) -> str | None:
    if internal.use == "attribute":
        return None if _has_attribute(owner, internal.name) else "no such attribute"
    if internal.use == "assigned":
        return None if internal.name in _stored_attributes(owner) else "no longer assigned there"
    target = getattr(owner, internal.name, None)
    if target is None:
        return "not found"
    if internal.use in ("subclassed", "extended"):
        if not inspect.isclass(target):
            return "not a class"
        if internal.use == "extended" and not _takes_new_attributes(target):
            return "its instances take no new attributes (__slots__)"
        return None
    if not callable(target):
        return "not callable"
    if internal.use == "overridden" and (not inspect.isclass(owner) or getattr(target, "__isabstractmethod__", False)):
        return "no implementation of the class's own to override"
    return _check_params(target, internal.params)


def _check_params(target: Any, expected: tuple[str, ...]) -> str | None:
    try:
        names = list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return "no signature to check" if expected else None
    position = 0
    for name in expected:
        if name not in names[position:]:
            return f"expected parameters {expected}, found {tuple(names)}"
        position = names.index(name, position) + 1
    return None


def _has_attribute(owner: Any, name: str) -> bool:
    if hasattr(owner, name):
        return True
    if not inspect.isclass(owner):
        return False
    for cls in owner.__mro__:
        if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
            return True
        if name in getattr(cls, "__annotations__", {}) or name in _self_attributes(cls):
            return True
    return False


def _source_tree(obj: Any) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError):
        return None


def _self_attributes(cls: type) -> set[str]:
    """The attributes a class's own methods set on `self`."""
    tree = _source_tree(cls)
    if tree is None:
        return set()
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name) and node.value.id == "self"}


def _stored_attributes(owner: Any) -> set[str]:
    """Every attribute a function (or class, or module) assigns, on any object."""
    tree = _source_tree(owner)
    if tree is None:
        return set()
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)}


def _takes_new_attributes(cls: type) -> bool:
    return all("__slots__" not in vars(base) or "__dict__" in vars(base)["__slots__"]
               for base in cls.__mro__ if base is not object)
