"""policies._fast.maker: a record built by it is the one its class would build."""

from __future__ import annotations

import dataclasses

import pytest

from llm_governor.backends.base import Lease
from llm_governor.policies._fast import maker
from llm_governor.policies.adaptive import AdaptiveState
from llm_governor.policies.admission import AdmitRequest, ServiceState
from llm_governor.policies.breaker import BreakerState


def test_made_records_equal_constructed_ones_field_for_field() -> None:
    values = (1.5, 2.5, 3.5, BreakerState("open", 3, 0, 9.0), AdaptiveState(rate=2.0), 60.0,
              4, 1, 7, 2)
    made, built = maker(ServiceState)(*values), ServiceState(*values)
    assert type(made) is ServiceState and made == built and hash(made) == hash(built)
    assert dataclasses.astuple(made) == dataclasses.astuple(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.ok = 5  # type: ignore[misc]
    lease = maker(Lease)("id", "svc", 1, 2.0, ("tenant=a",))
    assert lease == Lease("id", "svc", 1, 2.0, ("tenant=a",))


def test_every_field_must_be_given() -> None:
    with pytest.raises(TypeError):
        maker(Lease)("id", "svc", 1, 2.0)


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
