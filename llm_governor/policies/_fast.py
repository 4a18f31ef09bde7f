"""Building frozen, slotted dataclass records on the hot path.

A frozen dataclass's generated ``__init__`` sets each field through
``object.__setattr__`` (the class forbids plain assignment), so a record of
ten fields costs as much to build as the decision that fills it, and
``dataclasses.replace`` adds a walk over ``fields()`` on top. The functions
here return constructors that set the slots through their descriptors
instead: the very same object (same type, equal, hashing alike), in a
fraction of the time. The record's own constructor stays the public one; these
are for the few places that build a record on every call.

They accept only what they can build faithfully: a slotted dataclass whose
fields ``__init__`` all sets and that has no ``__post_init__`` (anything else
is refused when the constructor is made, at import time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MemberDescriptorType
from typing import Any, TypeVar

__all__ = ["builder", "evolve", "maker"]

T = TypeVar("T")
_MISSING = object()


def _checked(cls: type[Any]) -> tuple[dataclasses.Field[Any], ...]:
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: a dataclass without __post_init__ is needed")
    fields = dataclasses.fields(cls)
    if not all(f.init and not f.kw_only for f in fields) or not all(
            isinstance(cls.__dict__.get(f.name), MemberDescriptorType) for f in fields):
        raise TypeError(f"{cls.__name__}: every field must be a positional slot __init__ sets")
    return fields


def _compile(cls: type[Any], name: str, signature: str, lines: list[str],
             scope: dict[str, Any]) -> Any:
    for i, f in enumerate(dataclasses.fields(cls)):
        scope[f"_set{i}"] = cls.__dict__[f.name].__set__
    scope.update(_new=object.__new__, _cls=cls, _MISSING=_MISSING)
    body = "".join(f"    {line}\n" for line in lines)
    source = f"def {name}_{cls.__name__}({signature}):\n    x = _new(_cls)\n{body}    return x\n"
    exec(source, scope)  # the source is built here from the class's own field names
    return scope[f"{name}_{cls.__name__}"]


def maker(cls: type[T]) -> Callable[..., T]:
    """A positional constructor of ``cls``: ``maker(C)(a, b, …)`` equals ``C(a, b, …)``
    with every field given, in declaration order (the exact arity: a missing or extra
    field fails as a call of the class would)."""
    fields = _checked(cls)
    names = [f.name for f in fields]
    made: Callable[..., T] = _compile(cls, "make", ", ".join(names),
                                      [f"_set{i}(x, {n})" for i, n in enumerate(names)], {})
    return made


def builder(cls: type[T]) -> Callable[..., T]:
    """A constructor of ``cls`` with ``__init__``'s own signature (the same names and
    defaults, default factories called alike): ``builder(C)(**kw)`` equals ``C(**kw)``."""
    fields = _checked(cls)
    scope: dict[str, Any] = {}
    params, lines = [], []
    for i, f in enumerate(fields):
        if f.default is not dataclasses.MISSING:
            scope[f"_dflt{i}"] = f.default
            params.append(f"{f.name}=_dflt{i}")
            lines.append(f"_set{i}(x, {f.name})")
        elif f.default_factory is not dataclasses.MISSING:
            scope[f"_fact{i}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            lines.append(f"_set{i}(x, _fact{i}() if {f.name} is _MISSING else {f.name})")
        else:
            if any("=" in p for p in params):
                raise TypeError(f"{cls.__name__}: a field without default after one with")
            params.append(f.name)
            lines.append(f"_set{i}(x, {f.name})")
    built: Callable[..., T] = _compile(cls, "build", ", ".join(params), lines, scope)
    return built


def evolve(cls: type[T]) -> Callable[[T, Mapping[str, Any]], T]:
    """``evolve(C)(record, changes)`` equals ``dataclasses.replace(record, **changes)``
    for a record of ``C`` (an unknown field name is a TypeError, as there)."""
    fields = _checked(cls)
    names = frozenset(f.name for f in fields)
    setters = {f.name: cls.__dict__[f.name].__set__ for f in fields}
    scope: dict[str, Any] = {"_setters": setters, "_unknown": _unknown, "_names": names}
    # every field from the record, then the changed ones (fewer steps than a lookup each)
    lines = [f"_set{i}(x, src.{f.name})" for i, f in enumerate(fields)]
    lines += ["try:", "    for name, value in changes.items():",
              "        _setters[name](x, value)",
              "except KeyError:", "    _unknown(_cls, changes, _names)"]
    evolved: Callable[[T, Mapping[str, Any]], T] = _compile(cls, "evolve", "src, changes",
                                                           lines, scope)
    return evolved


def _unknown(cls: type[Any], changes: Mapping[str, Any], names: frozenset[str]) -> None:
    extra = ", ".join(sorted(set(changes) - names))
    raise TypeError(f"{cls.__name__} has no field(s) {extra}")
