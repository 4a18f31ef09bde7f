"""policies._fast.maker: a record built by it is the one its class would build."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from llm_governor.backends.base import Lease
from llm_governor.policies._fast import maker
from llm_governor.policies.adaptive import AdaptiveState
from llm_governor.policies.admission import AdmitRequest, ServiceState
from llm_governor.policies.breaker import BreakerState


def test_made_records_equal_constructed_ones_field_for_field() -> None:
    values = (1.5, 2.5, 3.5, BreakerState("open", 3, 0, 9.0), AdaptiveState(rate=2.0), 60.0,
              4, 1, 7, 2, 12, "9.5:11;10:12")
    made, built = maker(ServiceState)(*values), ServiceState(*values)
    assert type(made) is ServiceState and made == built and hash(made) == hash(built)
    assert dataclasses.astuple(made) == dataclasses.astuple(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.ok = 5  # type: ignore[misc]
    lease = maker(Lease)("id", "svc", Decimal("0.5"), 2.0, ("tenant=a",))
    assert lease == Lease("id", "svc", Decimal("0.5"), 2.0, ("tenant=a",))


def test_every_field_must_be_given() -> None:
    with pytest.raises(TypeError):
        maker(Lease)("id", "svc", Decimal(1), 2.0)


def test_records_it_cannot_build_faithfully_are_refused() -> None:
    with pytest.raises(TypeError):
        maker(AdmitRequest)  # __post_init__ and a field __init__ does not set

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        x: int

    with pytest.raises(TypeError):
        maker(NoSlots)
    with pytest.raises(TypeError):
        maker(int)


def test_built_records_take_the_class_signature_and_defaults() -> None:
    from llm_governor.governor import CallSpec
    from llm_governor.policies._fast import builder

    build = builder(CallSpec)
    assert build("svc") == CallSpec("svc")
    kw: dict[str, object] = {"service": "openai", "operation": "chat", "model": "m",
                             "stream": True, "max_output_tokens": 16, "prompt_bytes": 10,
                             "max_retries": 2, "genai": {"gen_ai.operation.name": "chat"}}
    made = build(**kw)
    assert made == CallSpec(**kw) and made.genai == kw["genai"]  # type: ignore[arg-type]
    assert dataclasses.astuple(made) == dataclasses.astuple(CallSpec(**kw))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        build()
    with pytest.raises(TypeError):
        build("svc", nope=1)
    fresh = builder(ServiceState)
    assert fresh() == ServiceState() and fresh().breaker is not fresh().breaker  # factories


def test_evolved_records_are_what_replace_makes() -> None:
    from llm_governor.governor import CallSpec
    from llm_governor.policies._fast import evolve

    spec = CallSpec("openai", "chat", "m", max_output_tokens=16, genai={"a": 1})
    changes: dict[str, object] = {"service": "azure", "key": "azure|host|abc",
                                  "endpoint": "host", "sdk": "openai", "sdk_spans": True,
                                  "genai": {"b": 2}}
    evolved = evolve(CallSpec)(spec, changes)
    replaced = dataclasses.replace(spec, **changes)  # type: ignore[arg-type]
    assert dataclasses.astuple(evolved) == dataclasses.astuple(replaced)
    assert evolve(CallSpec)(spec, {}) == spec
    with pytest.raises(TypeError, match="nope"):
        evolve(CallSpec)(spec, {"nope": 1})
