"""The shape every SDK adapter shares: patch a per-call choke point, govern what passes.

An adapter says, for one SDK, which functions to patch (:meth:`Adapter.patches`),
which calls are governed and what they are (:meth:`Adapter.describe`), how a
failed attempt is classified (:meth:`Adapter.classify`), how a governor
rejection looks in that SDK (:meth:`Adapter.rejection`) and how a result is
settled (:meth:`Adapter.complete` / :meth:`Adapter.acomplete`). The wrappers
built here do the rest, identically for every SDK, sync and async:

    admit → attempts (the SDK's own retries off; classified, retried and
    re-admitted by the governor) → settle now, or hand the result to a
    :class:`~.streams.Settlement` when it ends later (streams, unread bodies).

While a call's attempts run, :data:`ACTIVE` holds it, so a per-attempt patch
deeper in the SDK (where response headers are visible) can report the
provider's rate-limit headers with :func:`observe_provider`.

A new SDK needs one module: an :class:`Adapter` subclass whose ``patches``
wraps the SDK's per-call choke point(s) with :func:`sync_governed` /
:func:`async_governed`, whose ``describe`` turns the call's arguments into a
:class:`~llm_governor.governor.CallSpec` plus the arguments of one attempt
with the SDK's own retries off, whose ``classify`` maps SDK errors with
:func:`~._errors.classify_status`, and whose ``tracker`` reads usage; then an
entry in ``ADAPTERS``. Streamed results are wrapped with
:func:`~.streams.watch_iter` / :func:`~.streams.watch_aiter` and a
:class:`~.streams.Settlement` in ``complete`` / ``acomplete``.
"""

from __future__ import annotations

import abc
import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import GovernorError
from ..governor import FAILURE_ATTR, CallSpec, Governor, Ticket
from ..policies.adaptive import ProviderLimits
from ..policies.retry import AttemptFailure
from .streams import UsageTracker

if TYPE_CHECKING:
    from ..pricing import Usage

__all__ = ["ACTIVE", "Adapter", "Call", "GovernorGetter", "Patch", "Wrapper", "async_governed",
           "observe_provider", "run_attempts", "sync_governed"]

logger = logging.getLogger("llm_governor")
GovernorGetter = Callable[[], Governor]
# wrapt's wrapper signature: (wrapped, instance, args, kwargs) -> result
Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Patch:
    """``owner.name`` is wrapped with ``wrapper`` (``owner`` a class or module)."""

    owner: Any
    name: str
    wrapper: Wrapper


@dataclass(slots=True)
class Call:
    """One governed SDK call: what it is, and the arguments its attempts use."""

    spec: CallSpec
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)  # adapter-private facts


@dataclass(slots=True)
class Active:
    """The governed call whose attempts are running in this context."""

    gov: Governor
    ticket: Ticket


ACTIVE: contextvars.ContextVar[Active | None] = contextvars.ContextVar(
    "llm_governor_active_call", default=None)


def observe_provider(limits: ProviderLimits | None) -> None:
    """Record a successful attempt's rate-limit headers on the active call, if any."""
    active = ACTIVE.get()
    if active is None or limits is None:
        return
    t = active.ticket
    t.provider = limits
    telemetry = active.gov.telemetry
    if limits.remaining_requests is not None:
        telemetry.provider_remaining(t.service, "requests", limits.remaining_requests)
    if limits.remaining_tokens is not None:
        telemetry.provider_remaining(t.service, "tokens", limits.remaining_tokens)


class Adapter(abc.ABC):
    """How one vendor SDK is governed. Subclasses are stateless apart from resolved SDK types."""

    #: the SDK's top-level module; patches are applied once it is imported
    module: str

    @abc.abstractmethod
    def patches(self, getter: GovernorGetter) -> list[Patch]:
        """What to wrap; called once the SDK is imported (never imports it otherwise)."""

    @abc.abstractmethod
    def describe(self, instance: Any, args: tuple[Any, ...],
                 kwargs: Mapping[str, Any]) -> Call | None:
        """The governed call these arguments make, or ``None`` to pass it through ungoverned."""

    @abc.abstractmethod
    def classify(self, exc: BaseException) -> AttemptFailure:
        """What a failed attempt means for retries and the breaker."""

    @abc.abstractmethod
    def tracker(self, call: Call) -> UsageTracker:
        """A fresh usage reader for this call's response."""

    def rejection(self, exc: GovernorError, call: Call) -> BaseException:
        """``exc`` as this SDK's own error for the same situation (default: unchanged)."""
        return exc

    def complete(self, gov: Governor, t: Ticket, call: Call, result: Any) -> Any:
        """Settle a successful call (or arrange its settlement); return what the user gets."""
        gov.settle(t, self.usage(call, result))
        return result

    async def acomplete(self, gov: Governor, t: Ticket, call: Call, result: Any) -> Any:
        """:meth:`complete` for async clients."""
        await gov.asettle(t, self.usage(call, result))
        return result

    def usage(self, call: Call, result: Any) -> Usage | None:
        """What a complete result says was consumed (``None``: unknown)."""
        return self.tracker(call).final(result)

    def failed(self, exc: BaseException) -> bool:
        """Whether ``exc`` counts as a failure for the breaker."""
        failure: AttemptFailure | None = getattr(exc, FAILURE_ATTR, None)
        if failure is None and not isinstance(exc, GovernorError) and isinstance(exc, Exception):
            failure = self.classify(exc)
        return failure is not None and failure.kind == "failure"

    def _mark(self, exc: BaseException) -> None:
        """Attach the classification the governor's retry loop reads."""
        if not hasattr(exc, FAILURE_ATTR):  # exceptions always have a __dict__
            setattr(exc, FAILURE_ATTR, self.classify(exc))


def _refused_retry(adapter: Adapter, call: Call, failed: list[Exception],
                   refusal: GovernorError) -> BaseException:
    """What the user sees when a retry is refused: the provider's error, with a note why."""
    if not failed:
        return adapter.rejection(refusal, call)
    err = failed[0]
    err.add_note(f"llm-governor did not retry: {refusal}")
    return err


def run_attempts(adapter: Adapter, gov: Governor, t: Ticket, call: Call,
                 attempt: Callable[[], Any], failed: list[Exception]) -> Any:
    """The governor's attempts at ``call``, with :data:`ACTIVE` set; settles on failure."""
    token = ACTIVE.set(Active(gov, t))
    try:
        return gov.run_attempts(t, attempt)
    except GovernorError as exc:  # a retry that was not re-admitted
        err = _refused_retry(adapter, call, failed, exc)
        gov.settle(t, error=err, outcome="neutral")
        raise err from None
    except BaseException as exc:
        gov.settle(t, error=exc)
        raise
    finally:
        ACTIVE.reset(token)


def _describe(adapter: Adapter, instance: Any, args: tuple[Any, ...],
              kwargs: Mapping[str, Any]) -> Call | None:
    """``adapter.describe``, but an SDK shape we cannot read never breaks the user's call."""
    try:
        return adapter.describe(instance, args, kwargs)
    except Exception:
        logger.warning("RATE_LIMIT cannot read this %s call: passing it through ungoverned",
                       adapter.module, exc_info=True)
        return None


def sync_governed(adapter: Adapter, getter: GovernorGetter) -> Wrapper:
    """A wrapt wrapper governing every call ``adapter`` describes, for sync functions."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        call = _describe(adapter, instance, args, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        gov = getter()
        try:
            t = gov.admit(call.spec)
        except GovernorError as exc:
            raise adapter.rejection(exc, call) from None

        failed: list[Exception] = []

        def attempt() -> Any:
            try:
                return wrapped(*call.args, **call.kwargs)
            except Exception as exc:
                adapter._mark(exc)
                failed[:] = [exc]
                raise

        result = run_attempts(adapter, gov, t, call, attempt, failed)
        try:
            return adapter.complete(gov, t, call, result)
        except BaseException as exc:
            gov.settle(t, error=exc)
            raise

    return wrapper


def async_governed(adapter: Adapter, getter: GovernorGetter) -> Wrapper:
    """:func:`sync_governed` for functions returning awaitables (called, not awaited, by wrapt)."""

    async def governed(wrapped: Callable[..., Awaitable[Any]], call: Call) -> Any:
        gov = getter()
        try:
            t = await gov.aadmit(call.spec)
        except GovernorError as exc:
            raise adapter.rejection(exc, call) from None

        failed: list[Exception] = []

        async def attempt() -> Any:
            try:
                return await wrapped(*call.args, **call.kwargs)
            except Exception as exc:
                adapter._mark(exc)
                failed[:] = [exc]
                raise

        token = ACTIVE.set(Active(gov, t))
        try:
            result = await gov.arun_attempts(t, attempt)
        except GovernorError as exc:  # a retry that was not re-admitted
            err = _refused_retry(adapter, call, failed, exc)
            await gov.asettle(t, error=err, outcome="neutral")
            raise err from None
        except BaseException as exc:
            await gov.asettle(t, error=exc)
            raise
        finally:
            ACTIVE.reset(token)
        try:
            return await adapter.acomplete(gov, t, call, result)
        except BaseException as exc:
            await gov.asettle(t, error=exc)
            raise

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        call = _describe(adapter, instance, args, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        return governed(wrapped, call)

    return wrapper
