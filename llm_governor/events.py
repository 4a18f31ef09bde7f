"""What the governor tells its observers: small frozen records, one per event.

The governor decides; observers (the OpenTelemetry exporter, an application's
own audit log) are told what happened and keep whatever per-call state they
need themselves, keyed by the :class:`Call` record. Nothing an observer does
flows back: a failing observer is logged once and counted
(``Governor.telemetry_errors``), and the call goes on.

Events of one call, in order: :class:`Started`, one or more :class:`Decided`
(``queued``, then ``admitted`` or a refusal; again for each retry's
re-admission), :class:`Sent` (the first attempt leaves the process),
:class:`Retried` per retry, :class:`Overrun` if usage passed the reservation,
and :class:`Settled` exactly once. :class:`ProviderLimitsSeen` and
:class:`ThresholdCrossed` are about a limit scope or a budget, not a call.
A call is told from its start to its settlement or not at all: whether any
observer listens (:attr:`Observer.listening`) is asked when the call starts.

Records are ``NamedTuple``\\ s (the cheapest immutable record to build: several
are made per call) except :class:`Call`, made once per call and weakly
referenceable so observers can attach state that disappears with the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .governor import CallSpec
    from .policies.adaptive import ProviderLimits
    from .pricing import Usage

__all__ = ["Call", "Decided", "Observer", "Overrun", "ProviderLimitsSeen", "Retried", "Sent",
           "Settled", "Started", "ThresholdCrossed"]


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class Call:
    """One governed call as observers see it: fixed once its policies have run.

    Compared and hashed by identity (two calls with equal fields are two calls).
    """

    service: str
    model: str  # "unknown" when the request names none
    priority: str  # the Priority's name, lower case
    reserved: Decimal  # the budget reservation of each attempt
    job: str | None
    labels: Mapping[str, str]  # the call's scope labels
    metric_attributes: Mapping[str, str]  # scope labels that are metric attributes
    observe: bool  # observe mode: never waits, refused or changed
    spec: CallSpec  # what the adapter described: operation, SDK, GenAI attributes, stream


class Started(NamedTuple):
    """The call is about to wait for admission."""

    call: Call


class Decided(NamedTuple):
    """An admission decision: ``admitted``, ``queued`` (a wait began), a refusal
    (``rate_limited``, ``budget_exceeded``…) or, in observe mode, ``would_<refusal>``."""

    call: Call
    outcome: str
    retry_after: float
    queue_wait: float  # seconds waited for admission so far, over all of the call's admissions


class Sent(NamedTuple):
    """The first attempt left the process (monotonic ``at``)."""

    call: Call
    at: float


class Retried(NamedTuple):
    """An attempt is retried after ``wait`` seconds (None: not known)."""

    call: Call
    attempt: int  # the attempt that failed, from 1
    reason: str
    wait: float | None


class Overrun(NamedTuple):
    """Usage was charged ``amount`` USD above the call's reservation."""

    call: Call
    amount: Decimal


class Settled(NamedTuple):
    """The call ended: settled after running (``ran``), or refused before it ran."""

    call: Call
    ran: bool  # admitted and settled; False: refused or failed before running
    error: BaseException | None
    usage: Usage | None
    cost: Decimal  # charged in all, lost attempts included
    attempts: int
    queue_wait: float
    emergency: bool
    held: float  # seconds held by the governor between attempts
    would: str | None  # observe mode: the first refusal it would have met
    sent_at: float  # monotonic time of the first send (0: never sent)
    first_chunk: float  # streams: monotonic time of the first chunk (0: none)
    last_chunk: float  # streams: monotonic time of the last chunk (0: none)
    chunk_gaps: tuple[float, ...]  # streams: seconds between consecutive chunks


class ProviderLimitsSeen(NamedTuple):
    """A response carried rate-limit headers for ``service`` (limit scope ``key``)."""

    service: str
    key: str
    limits: ProviderLimits


class ThresholdCrossed(NamedTuple):
    """A budget threshold was crossed (``key``: a scope ``kind=value``, "" global)."""

    key: str
    window: str
    threshold: Decimal


class Observer:
    """Receives the governor's events; override what you need (each default does
    nothing). Called on the thread or task of the call, so keep them quick."""

    #: False: build no event for this observer now (the governor builds no record for
    #: a call that starts while no observer listens; telemetry does not listen while
    #: nothing records)
    listening: bool = True

    def on_start(self, event: Started) -> None:
        """A call starts waiting for admission."""

    def on_admit(self, event: Decided) -> None:
        """An admission decision (see :class:`Decided`)."""

    def on_send(self, event: Sent) -> None:
        """The first attempt of a call left the process."""

    def on_retry(self, event: Retried) -> None:
        """An attempt is retried."""

    def on_overrun(self, event: Overrun) -> None:
        """Usage above the reservation was charged."""

    def on_settle(self, event: Settled) -> None:
        """A call ended (exactly once per started call)."""

    def on_provider_limits(self, event: ProviderLimitsSeen) -> None:
        """A response reported the provider's rate limits."""

    def on_threshold(self, event: ThresholdCrossed) -> None:
        """A budget threshold was crossed."""

    def close(self) -> None:
        """The governor is closing."""
