"""Building frozen, slotted dataclass records on the hot path.

A frozen dataclass's generated ``__init__`` sets each field through
``object.__setattr__`` (the class forbids plain assignment), so a record of
ten fields costs as much to build as the decision that fills it. :func:`maker`
returns a constructor taking every field positionally that sets the slots
through their descriptors: the very same object (same type, equal, hashing
alike), in about half the time. The record's own constructor stays the public
one; this is for the few places that build a record on every call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import MemberDescriptorType
from typing import Any, TypeVar

__all__ = ["maker"]

T = TypeVar("T")


def maker(cls: type[T]) -> Callable[..., T]:
    """A positional constructor of ``cls``: ``maker(C)(a, b, …)`` equals ``C(a, b, …)``
    with every field given, in declaration order.

    ``cls`` must be a slotted dataclass whose fields are all set by ``__init__`` and
    which has no ``__post_init__`` (refused otherwise, at import time).
    """
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: a dataclass without __post_init__ is needed")
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    if not all(f.init for f in fields) or not all(
            isinstance(cls.__dict__.get(n), MemberDescriptorType) for n in names):
        raise TypeError(f"{cls.__name__}: every field must be a slot set by __init__")
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    body = []
    for i, name in enumerate(names):
        scope[f"_set{i}"] = cls.__dict__[name].__set__
        body.append(f"    _set{i}(x, {name})\n")
    args = ", ".join(names)
    # the exact arity, so a missing or extra field fails as a call of the class would
    source = f"def make_{cls.__name__}({args}):\n    x = _new(_cls)\n{''.join(body)}    return x\n"
    exec(source, scope)  # the source is built above from the class's own field names
    made: Callable[..., T] = scope[f"make_{cls.__name__}"]
    return made
