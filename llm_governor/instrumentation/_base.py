"""The shape every SDK adapter shares: govern each logical call, observe each attempt.

An adapter says, for one SDK, which functions to patch (:meth:`Adapter.patches`),
which calls are governed and what they are (:meth:`Adapter.describe`), how a
failed attempt is classified (:meth:`Adapter.classify`), how a governor
rejection looks in that SDK (:meth:`Adapter.rejection`) and how a result is
settled (:meth:`Adapter.complete` / :meth:`Adapter.acomplete`).

The SDK keeps its own retry loop: it decides whether to retry, counts its
attempts and sends its retry headers as it would bare. Three kinds of patch
cooperate through :data:`ACTIVE`, the governed call running in this context:

* the per-call choke point (:func:`sync_governed` / :func:`async_governed`):
  admit → the SDK's whole call → settle now, or hand the result to a
  :class:`~.streams.Settlement` when it ends later (streams, unread bodies);
* the per-attempt point (:func:`observe_attempt`): an attempt started, and how
  it ended (success headers, an error status, or an exception that did or did
  not leave the process), which decides what a failure costs;
* the retry point (the SDK's sleep before a retry): the governor waits at
  least what the SDK would and re-admits the attempt, or vetoes the retry by
  letting the SDK's own error for the last attempt surface, with a note.
"""

from __future__ import annotations

import abc
import contextvars
import logging
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from ..errors import GovernorError
from ..governor import CallSpec, Governor, Ticket
from ..policies._fast import evolve
from ..policies.retry import AttemptFailure
from ._genai import server_attributes
from .streams import UsageTracker

if TYPE_CHECKING:
    from ..pricing import Usage

__all__ = ["ACTIVE", "Active", "Adapter", "Call", "Do", "GovernorGetter", "Patch", "Steps",
           "Wrapper", "active_for", "arun_steps", "async_governed", "attempt_point",
           "call_failed", "governed", "governed_call", "note_veto", "run_steps", "scoped",
           "sync_governed", "unobserved"]

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
    """One governed SDK call: what it is, and the arguments the SDK call is made with."""

    spec: CallSpec
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)  # adapter-private facts


@dataclass(slots=True)
class Active:
    """The governed call whose attempts are running in this context, on ``instance``."""

    gov: Governor
    ticket: Ticket
    adapter: Adapter
    instance: Any
    call: Call
    attempting: bool = False  # inside an attempt hook (nested hooks pass through)
    last: Any = None  # adapter-private: the latest attempt's response
    sdk_wait: float | None = None  # adapter-private: the wait the SDK already slept
    sdk_retry: Any = None  # adapter-private: the SDK's own retry predicate for this call


ACTIVE: contextvars.ContextVar[Active | None] = contextvars.ContextVar(
    "llm_governor_active_call", default=None)


def active_for(instance: Any) -> Active | None:
    """The governed call running on the SDK client ``instance`` in this context, if any.

    Attempts of other clients (a token refresh through another client, a
    nested call) are not this call's.
    """
    active = ACTIVE.get()
    return active if active is not None and active.instance is instance else None


def note_veto(err: BaseException, refusal: GovernorError) -> BaseException:
    """``err`` with a note saying why the governor did not let the SDK retry."""
    err.add_note(f"llm-governor did not retry: {refusal}")
    return err


class Adapter(abc.ABC):
    """How one vendor SDK is governed. Subclasses are stateless apart from resolved SDK types."""

    #: the SDK's top-level module; patches are applied once it is imported
    module: str
    #: its distribution on PyPI, and the versions governed: ``(lowest, first not)``; the
    #: patched functions were checked to exist and behave the same across that range
    distribution: str
    versions: tuple[str, str]

    @abc.abstractmethod
    def patches(self, getter: GovernorGetter) -> list[Patch]:
        """What to wrap; called once the SDK is imported (never imports it otherwise)."""

    @abc.abstractmethod
    def describe(self, instance: Any, args: tuple[Any, ...],
                 kwargs: Mapping[str, Any]) -> Call | None:
        """The governed call these arguments make, or ``None`` to pass it through ungoverned."""

    @abc.abstractmethod
    def classify(self, exc: BaseException) -> AttemptFailure:
        """What a failed attempt (an exception, or an error status raised as one) means."""

    @abc.abstractmethod
    def tracker(self, call: Call) -> UsageTracker:
        """A fresh usage reader for this call's response."""

    def rejection(self, exc: GovernorError, call: Call) -> BaseException:
        """``exc`` as this SDK's own error for the same situation (default: unchanged)."""
        return exc

    def endpoint(self, instance: Any, call: Call) -> tuple[str | None, str | None]:
        """``(base URL, credential)`` of the account the call goes to (limit scope).

        The credential is only hashed into a fingerprint, never stored or shown.
        Default ``(None, None)``: the service itself is the scope.
        """
        return None, None

    def annotation(self, instance: Any, call: Call, base_url: str | None,
                   genai: bool = True) -> dict[str, Any]:
        """The :class:`CallSpec` fields telemetry reports of ``call``: the SDK, and (with
        ``genai``: while telemetry records) the request's GenAI attributes (operation and
        provider names, ``server.*``, the request's own settings from
        :meth:`request_attributes`)."""
        if not genai:
            return {"sdk": self.module}
        server = server_attributes(base_url)
        attrs: dict[str, Any] = {"gen_ai.operation.name": call.spec.operation}
        attrs.update(self.request_attributes(instance, call))
        attrs["gen_ai.provider.name"] = self.provider_name(instance, server.get("server.address"))
        attrs.update(server)
        return {"sdk": self.module, "genai": attrs, "sdk_spans": self.own_spans(instance)}

    def own_spans(self, instance: Any) -> bool:
        """Whether the SDK client itself emits a GenAI span for each call (default: no)."""
        return False

    def request_attributes(self, instance: Any, call: Call) -> dict[str, Any]:
        """The request's GenAI attributes beyond operation, provider, model and server."""
        return {}

    def provider_name(self, instance: Any, host: str | None) -> str:
        """``gen_ai.provider.name`` of a call made with client ``instance`` to ``host``."""
        return self.module

    def limit_retries(self, call: Call, retries: int) -> Call:
        """``call`` with the SDK's own retries set to ``retries`` (configured ``max_retries``).

        Default: unchanged (an SDK with no per-call setting keeps its own).
        """
        return call

    def substitute_model(self, call: Call, model: str) -> Call | None:
        """``call`` made with ``model`` instead (a policy's :class:`Substitute`), or
        ``None`` when this SDK call has no model to change (default)."""
        return None

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
        """Whether ``exc`` (ending a stream) counts as a failure for the breaker."""
        if isinstance(exc, GovernorError) or not isinstance(exc, Exception):
            return False
        return self.classify(exc).kind == "failure"


def _describe(adapter: Adapter, instance: Any, args: tuple[Any, ...],
              kwargs: Mapping[str, Any]) -> Call | None:
    """``adapter.describe``, but an SDK shape we cannot read never breaks the user's call."""
    try:
        return adapter.describe(instance, args, kwargs)
    except Exception:
        logger.warning("RATE_LIMIT cannot read this %s call: passing it through ungoverned",
                       adapter.module, exc_info=True)
        return None


evolve_spec = evolve(CallSpec)
"""``dataclasses.replace(spec, **changes)`` of a :class:`CallSpec`, as ``evolve_spec(spec,
changes)``, at a third of its cost (a call's spec is copied once or twice per call)."""


def scoped(adapter: Adapter, gov: Governor, instance: Any, call: Call) -> Call:
    """``call`` with its spec scoped to the provider account it goes to, and annotated
    for telemetry (:meth:`Adapter.annotation`): one copy of the spec for both."""
    base_url: str | None = None
    fields: dict[str, Any] = {}
    try:
        base_url, credential = adapter.endpoint(instance, call)
    except Exception:  # an SDK shape we cannot read: the service is the scope
        logger.debug("reading the endpoint of a %s call failed", adapter.module, exc_info=True)
    else:
        fields = gov.account_fields(call.spec.service, base_url, credential)
    try:
        fields.update(adapter.annotation(instance, call, base_url, gov.listening))
    except Exception:  # telemetry never breaks a call: it goes unannotated
        logger.debug("annotating a %s call failed", adapter.module, exc_info=True)
    if fields:
        call.spec = evolve_spec(call.spec, fields)
    return call


def _policy_hooks(adapter: Adapter, gov: Governor, holder: list[Call]) -> dict[str, Any]:
    """``admit()``'s keyword arguments that let custom policies read and change the call
    (``holder[0]``, replaced on a substitution); none when no policy is installed."""
    if not gov.policies:
        return {}

    def substitute(model: str) -> CallSpec | None:
        try:
            changed = adapter.substitute_model(holder[0], model)
        except Exception:  # an SDK shape we cannot change: the call goes as it was
            logger.debug("substituting %s in a %s call failed", model, adapter.module,
                         exc_info=True)
            return None
        if changed is None:
            return None
        holder[0] = changed
        return changed.spec

    def body() -> tuple[object, ...]:
        return holder[0].args, holder[0].kwargs

    return {"substitute": substitute, "body": body}


def call_failed(adapter: Adapter, gov: Governor, t: Ticket, exc: BaseException) -> None:
    """The SDK call ended in ``exc``: classify the attempt if no attempt hook did.

    A cancellation (``BaseException``) mid-attempt leaves it ``sending``: it
    may have reached the provider.
    """
    if t.state == "sending" and isinstance(exc, Exception) and not isinstance(exc, GovernorError):
        gov.attempt_failed(t, adapter.classify(exc), answered=False)


def unobserved(t: Ticket) -> Literal["neutral"] | None:
    """The outcome to fold in when a call ends in an error: ``neutral`` (provider headers,
    no breaker effect) unless an attempt hook already observed the failure."""
    return None if t.state in ("rejected", "unsent", "lost", "charged") else "neutral"


@dataclass(frozen=True, slots=True)
class Do:
    """One I/O step of a call's lifecycle, as the sync and the async runner perform it:
    ``sync(*args, **kwargs)``, or ``await asynchronous(*args, **kwargs)``."""

    sync: Callable[..., Any]
    asynchronous: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, sync: Callable[..., Any], asynchronous: Callable[..., Any], *args: Any,
           **kwargs: Any) -> Do:
        return cls(sync, asynchronous, args, kwargs)


T = TypeVar("T")
Steps = Generator[Do, Any, T]


def run_steps(steps: Steps[T]) -> T:
    """Drive a lifecycle in this thread: each step's result (or error) goes back in."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            return cast(T, done.value)
        value, error = None, None
        try:
            value = step.sync(*step.args, **step.kwargs)
        except BaseException as exc:  # handed to the lifecycle, which decides
            error = exc


async def arun_steps(steps: Steps[T]) -> T:
    """:func:`run_steps` for asyncio: each step awaited."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            return cast(T, done.value)
        value, error = None, None
        try:
            value = await step.asynchronous(*step.args, **step.kwargs)
        except BaseException as exc:
            error = exc


def governed_call(adapter: Adapter, gov: Governor, instance: Any, call: Call,
                  wrapped: Callable[..., Any],
                  complete: tuple[Callable[..., Any], Callable[..., Any]] | None = None
                  ) -> Steps[Any]:
    """The lifecycle of one governed SDK call, written once for sync and async: admit
    (custom policies may change the call), run the SDK's own call with its attempts
    reported (:data:`ACTIVE`), hand the result to the adapter (which settles it, now or
    when its stream ends; ``complete`` replaces the adapter's sync and async
    ``complete``), settle on any error."""
    holder = [scoped(adapter, gov, instance, call)]
    try:
        t = yield Do.of(gov.admit, gov.aadmit, holder[0].spec,
                        **_policy_hooks(adapter, gov, holder))
    except GovernorError as exc:
        raise adapter.rejection(exc, holder[0]) from None
    call = holder[0]
    retries = gov.max_retries(t)
    if retries is not None:
        call = adapter.limit_retries(call, retries)
    token = ACTIVE.set(Active(gov, t, adapter, instance, call))
    try:
        result = yield Do.of(wrapped, wrapped, *call.args, **call.kwargs)
    except BaseException as exc:
        call_failed(adapter, gov, t, exc)
        yield Do.of(gov.settle, gov.asettle, t, error=exc, outcome=unobserved(t))
        raise
    finally:
        ACTIVE.reset(token)
    try:
        done = complete or (adapter.complete, adapter.acomplete)
        return (yield Do.of(done[0], done[1], gov, t, call, result))
    except BaseException as exc:
        yield Do.of(gov.settle, gov.asettle, t, error=exc, outcome="neutral")
        raise


Attempts = Callable[[Callable[..., Any], Active, tuple[Any, ...], dict[str, Any]], Steps[Any]]


def attempt_point(attempts: Attempts, asynchronous: bool) -> Wrapper:
    """A wrapt wrapper for an SDK's per-attempt method: inside a governed call (and not
    nested in another attempt) the attempt is reported started, then ``attempts`` runs
    it as steps; elsewhere the method runs untouched."""
    runner = arun_steps if asynchronous else run_steps

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        active = active_for(instance)
        if active is None or active.attempting:
            return wrapped(*args, **kwargs)
        active.gov.attempt_started(active.ticket)
        active.attempting = True
        return runner(attempts(wrapped, active, args, kwargs))

    return wrapper


def governed(adapter: Adapter, getter: GovernorGetter, asynchronous: bool) -> Wrapper:
    """A wrapt wrapper governing every call ``adapter`` describes: the sync runner, or
    (for methods returning awaitables, called and not awaited by wrapt) the async one."""
    runner = arun_steps if asynchronous else run_steps

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        if active_for(instance) is not None:  # re-entered from inside a governed call
            return wrapped(*args, **kwargs)
        call = _describe(adapter, instance, args, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        return runner(governed_call(adapter, getter(), instance, call, wrapped))

    return wrapper


def sync_governed(adapter: Adapter, getter: GovernorGetter) -> Wrapper:
    """:func:`governed` for sync functions."""
    return governed(adapter, getter, asynchronous=False)


def async_governed(adapter: Adapter, getter: GovernorGetter) -> Wrapper:
    """:func:`governed` for functions returning awaitables."""
    return governed(adapter, getter, asynchronous=True)
