"""Configuration: pydantic models, loading from nothing / TOML / mapping / env, validation.

Everything a user can get wrong fails here, at ``instrument()`` or
``llm-governor validate``, with a :class:`ConfigError` that names the key, the
value and what is allowed, instead of misbehaving later on the hot path.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from .backends.schemes import default_state_path, problem, sqlite_path
from .context import SCOPE_KIND, SCOPE_VALUE
from .errors import ConfigError
from .presets import ENVIRONMENTS, preset_for
from .redaction import redact_url

__all__ = [
    "AlertsConfig",
    "BudgetConfig",
    "GovernorConfig",
    "LearnedReservationConfig",
    "MonitorConfig",
    "PriceOverride",
    "RateLimitConfig",
    "RetryConfig",
    "ScopeConfig",
    "ScopeLimits",
    "TelemetryConfig",
    "config_warnings",
    "default_state_path",
    "load_config",
    "redact_url",
    "sqlite_path",
]

Environment = Literal["development", "testing", "staging", "production"]
Reservation = Literal["worst_case", "learned"]


def _to_money(value: Any) -> Any:
    """Accept "1.50", 1, Decimal; floats via their shortest repr; refuse the rest."""
    if isinstance(value, bool):
        raise ValueError("a money amount, not a boolean")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, (int, float, str)):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError("a decimal amount in USD such as \"1.50\"") from None
    else:
        return value
    if not result.is_finite():
        raise ValueError("a finite decimal amount in USD such as \"1.50\"")
    return result


Money = Annotated[Decimal, BeforeValidator(_to_money)]
PositiveMoney = Annotated[Decimal, BeforeValidator(_to_money), Field(gt=0)]
NonNegativeMoney = Annotated[Decimal, BeforeValidator(_to_money), Field(ge=0)]

_STRICT = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RateLimitConfig(BaseModel):
    """Limits of one service (or one model of a service).

    The first thirteen fields are the original ones, with their defaults and meanings:
    ``max_tokens`` is the request bucket's capacity (not LLM tokens).
    """

    model_config = _STRICT

    # Token bucket parameters (requests)
    max_tokens: int = Field(10, ge=1, description="Request bucket capacity")
    refill_rate: float = Field(1.0, gt=0, description="Requests added per second")
    burst_capacity: int = Field(5, ge=0, description="Additional burst requests")
    # Cost-based limiting
    max_cost_per_minute: PositiveMoney = Decimal("1.00")
    cost_per_request: NonNegativeMoney = Decimal("0.01")
    # Circuit breaker
    failure_threshold: int = Field(5, ge=1)
    recovery_timeout: float = Field(30, gt=0)
    success_threshold: int = Field(3, ge=1)
    # Queue
    max_queue_size: int = Field(100, ge=1)
    request_timeout: float = Field(300, gt=0)
    # Adaptive
    min_interval: float = Field(0.1, gt=0)
    max_interval: float = Field(5.0, gt=0)
    backoff_multiplier: float = Field(1.5, gt=1)
    # New in llm-governor
    llm_tokens_per_minute: int = Field(0, ge=0, description="Provider TPM limit, 0 = none")
    max_concurrency: int = Field(0, ge=0, description="In-flight cap, 0 = none")
    max_retries: int | None = Field(None, ge=0, le=20, description="None = the client's own")
    timeout_failure_floor: float = Field(
        1.0, ge=0, description="a call's own timeout shorter than this (and than the service's "
                               "typical latency) is the caller's impatience, not a provider "
                               "failure for the breaker")
    audio_bytes_per_second: int = Field(
        16000, ge=1, description="Assumed bitrate bounding an audio file's duration"
    )
    base_url: str | None = Field(
        None, description="an OpenAI-compatible endpoint whose calls count as this service"
    )
    mode: Literal["enforce", "observe"] | None = Field(None, description="None: the global mode")
    reservation: Reservation | None = Field(
        None, description="how a call with no max output tokens is reserved; None: the global "
                          "setting")
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _intervals_ordered(self) -> RateLimitConfig:
        problems = []
        if self.max_interval < self.min_interval:
            problems.append(f"max_interval ({self.max_interval}) must be >= min_interval "
                            f"({self.min_interval})")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            problems.append(f"base_url = {self.base_url!r} must be an http(s):// URL")
        for model, override in self.models.items():
            if not isinstance(override, dict) or "models" in override or "base_url" in override:
                problems.append(f"models.{model} must be a table of service fields "
                                "(other than models and base_url)")
                continue
            try:
                self.for_model(model)
            except ValidationError as exc:
                for err in exc.errors():
                    key = ".".join(str(p) for p in err["loc"])
                    msg = unknown_key(key, RateLimitConfig) \
                        if err["type"] == "extra_forbidden" else err["msg"]
                    problems.append(f"models.{model}.{key} = {err.get('input')!r}: {msg}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def capacity(self) -> int:
        """Request bucket capacity: ``max_tokens + burst_capacity``."""
        return self.max_tokens + self.burst_capacity

    def for_model(self, model: str | None) -> RateLimitConfig:
        """This config with the overrides of ``model`` applied (itself when none)."""
        if not model or not self.models:
            return self
        override = self.models.get(model)
        if override is None:
            return self
        cache: dict[str, RateLimitConfig] = self.__dict__.setdefault("_model_cache", {})
        if model not in cache:
            fields = self.model_dump(exclude={"models"})
            cache[model] = RateLimitConfig.model_validate({**fields, **override})
        return cache[model]


class BudgetConfig(BaseModel):
    """Hard global budgets per calendar-aligned UTC window, all services together."""

    model_config = _STRICT

    per_minute: PositiveMoney | None = None
    per_hour: PositiveMoney | None = None
    per_day: PositiveMoney | None = None
    per_month: PositiveMoney | None = None

    def windows(self) -> dict[str, Decimal]:
        """The configured windows: name → limit."""
        out: dict[str, Decimal] = {}
        for name, value in (("minute", self.per_minute), ("hour", self.per_hour),
                            ("day", self.per_day), ("month", self.per_month)):
            if value is not None:
                out[name] = value
        return out


Mode = Literal["enforce", "observe"]


class ScopeLimits(BaseModel):
    """Budgets and limits of one scope value (a tenant, a user, a job…)."""

    model_config = _STRICT

    per_minute: PositiveMoney | None = None
    per_hour: PositiveMoney | None = None
    per_day: PositiveMoney | None = None
    per_month: PositiveMoney | None = None
    requests_per_minute: float | None = Field(None, gt=0)
    llm_tokens_per_minute: int | None = Field(None, ge=1)
    mode: Mode | None = Field(None, description="None: the global mode")
    reservation: Reservation | None = Field(
        None, description="None: the service's, else the global setting")

    def windows(self) -> dict[str, Decimal]:
        return BudgetConfig(per_minute=self.per_minute, per_hour=self.per_hour,
                            per_day=self.per_day, per_month=self.per_month).windows()


class ScopeConfig(ScopeLimits):
    """A scope kind: the limits every value of it gets, overrides per value, a metric label."""

    metric_label: bool = Field(False, description="label metrics with this kind's value "
                                                  "(mind the cardinality)")
    overrides: dict[Annotated[str, Field(pattern=SCOPE_VALUE)], ScopeLimits] = Field(
        default_factory=dict)

    def for_value(self, value: str) -> ScopeLimits:
        """This kind's limits with ``value``'s overrides applied."""
        override = self.overrides.get(value)
        base = self.model_dump(exclude={"metric_label", "overrides"})
        if override is None:
            return ScopeLimits.model_validate(base)
        return ScopeLimits.model_validate({**base, **override.model_dump(exclude_unset=True)})


class AlertsConfig(BaseModel):
    """Budget alerts: one ``budget_threshold`` alert per window, threshold and scope."""

    model_config = _STRICT

    budget_thresholds: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [0.5, 0.8, 0.95])


class PriceOverride(BaseModel):
    """USD per million tokens, per audio minute or per request; overrides bundled prices."""

    model_config = _STRICT

    input: NonNegativeMoney | None = None
    output: NonNegativeMoney | None = None
    cached_input: NonNegativeMoney | None = None
    cache_write: NonNegativeMoney | None = Field(
        None, description="5-minute prompt-cache writes (default: 1.25x input)")
    cache_write_1h: NonNegativeMoney | None = Field(
        None, description="1-hour prompt-cache writes (default: 2x input)")
    per_audio_minute: NonNegativeMoney | None = None
    per_request: NonNegativeMoney | None = None
    max_output_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _something_priced(self) -> PriceOverride:
        if all(v is None for v in (self.input, self.output, self.per_audio_minute,
                                   self.per_request)):
            raise ValueError("give at least one of input, output, per_audio_minute, per_request")
        return self


class LearnedReservationConfig(BaseModel):
    """How ``reservation = "learned"`` bounds a call that sets no max output tokens.

    The bound is the ``percentile`` of the model's last ``window`` settled
    outputs (calls without a cap, and capped ones that ended before it), never
    below ``floor`` tokens; until ``warmup`` such calls have settled, the call
    reserves the worst case (5 by default: a budget barely above one worst case
    must get through them).
    """

    model_config = _STRICT

    percentile: float = Field(0.99, gt=0, le=1)
    window: int = Field(200, ge=1, le=100_000)
    warmup: int = Field(5, ge=1)
    floor: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _warmup_fits(self) -> LearnedReservationConfig:
        if self.warmup > self.window:
            raise ValueError(f"warmup ({self.warmup}) must be <= window ({self.window})")
        return self


class MonitorConfig(BaseModel):
    """Alert thresholds of the in-process monitor (and the shipped Prometheus rules)."""

    model_config = _STRICT

    interval: float = Field(5.0, gt=0)
    failure_rate_threshold: float = Field(0.2, gt=0, le=1, description="error share that alerts")
    min_calls_for_failure_rate: int = Field(5, ge=1)
    queue_backup_threshold: float = Field(0.8, gt=0, le=1, description="queue fill that alerts")
    cost_spike_multiplier: float = Field(3.0, gt=1, description="recent $/min vs baseline")
    cost_spike_min_per_minute: NonNegativeMoney = Decimal("0.05")
    low_tokens_threshold: float = Field(0.1, ge=0, lt=1, description="bucket fill that alerts")
    budget_nearly_exhausted_threshold: float = Field(0.1, ge=0, lt=1)


class RetryConfig(BaseModel):
    """How the governor paces retries.

    Retries may add at most ``budget_ratio`` of recent calls (plus a floor).
    ``absorb_throttled``: a 429 the SDK would retry is re-queued and re-sent
    as the same attempt (until ``request_timeout``) instead of spending one of
    the SDK's retries, which exist for failures. ``max_block`` bounds every
    wait a provider's headers can impose (a ``retry-after`` of a year blocks
    for at most that long).
    """

    model_config = _STRICT

    budget_ratio: float = Field(0.2, ge=0, le=10)
    budget_min_per_minute: int = Field(10, ge=0)
    max_wait: float = Field(60.0, gt=0, description="never sleep longer than this between tries")
    absorb_throttled: bool = True
    max_block: float = Field(
        300.0, gt=0, le=86400,
        description="the longest a provider's retry-after or reset may block a limit scope")


class TelemetryConfig(BaseModel):
    """What llm-governor emits besides its own ``llm_governor.*`` data.

    ``genai``: the OpenTelemetry GenAI client spans and ``gen_ai.client.*``
    metrics of governed SDK calls. ``auto`` emits them for an SDK unless another
    GenAI instrumentation already covers it in this process (opentelemetry-
    instrumentation-openai-v2 and its siblings, OpenLLMetry, OpenLIT…);
    ``on`` always; ``off`` never. ``cost_attributes`` adds the proposed
    ``gen_ai.usage.cost.*`` attributes to the GenAI span.
    """

    model_config = _STRICT

    genai: Literal["auto", "on", "off"] = "auto"
    cost_attributes: bool = False


def _check_backend(url: str) -> str:
    """One verdict with ``create_backend``: both ask the scheme registry."""
    msg = problem(url)
    if msg is not None:
        raise ValueError(msg)
    return url


class GovernorConfig(BaseModel):
    """The whole configuration: environment, backend, budgets, services, prices."""

    model_config = _STRICT

    environment: Environment = "development"
    defaults: Literal["preset", "permissive"] = Field(
        "preset", description="services not configured start from the environment's preset, "
                              "or (no environment chosen) from permissive limits")
    backend: Annotated[str, AfterValidator(_check_backend)] = "sqlite"
    namespace: str = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    on_backend_error: Literal["local", "closed", "open"] = "local"
    degraded_budget_share: float = Field(
        0.25, gt=0, le=1, description="share of each budget a process may spend while degraded"
    )
    emergency_action: Literal["throttle", "refuse"] = "throttle"
    max_retries: int | None = Field(None, ge=0, le=20)
    lease_ttl: float = Field(
        30.0, ge=1, le=3600,
        description="seconds a call's budget and slot hold outlives its process's last heartbeat",
    )
    mode: Mode = Field("enforce", description="observe: never wait or refuse, only record "
                                              "what would have happened")
    reservation: Reservation = Field(
        "worst_case", description="a call with no max output tokens reserves the model's output "
                                  "cap (worst_case) or a high percentile of its recent outputs "
                                  "(learned)")
    learned: LearnedReservationConfig = Field(
        default_factory=lambda: LearnedReservationConfig())
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    scopes: dict[Annotated[str, Field(pattern=SCOPE_KIND)], ScopeConfig] = Field(
        default_factory=dict)
    alerts: AlertsConfig = Field(default_factory=lambda: AlertsConfig())
    policies: list[str] = Field(default_factory=list, description="importable callables "
                                                                  "'module:name' run before "
                                                                  "admission")
    services: dict[str, RateLimitConfig] = Field(default_factory=dict)
    prices: dict[str, PriceOverride] = Field(default_factory=dict)
    monitor: MonitorConfig = Field(default_factory=lambda: MonitorConfig())
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig())
    telemetry: TelemetryConfig = Field(default_factory=lambda: TelemetryConfig())
    # Raw per-service overrides as the user gave them, kept to build services
    # that appear later (e.g. a decorator's custom name) from the same preset.
    service_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict, exclude=True)
    # Where it came from, in words (a TOML path, code, the presets); load_config sets it.
    _source: str = PrivateAttr("in code")

    @model_validator(mode="before")
    @classmethod
    def _merge_presets(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        env = data.get("environment", "development")
        if env not in ENVIRONMENTS:
            return data  # the field validator reports it
        preset = "permissive" if data.get("defaults") == "permissive" else env
        raw_services = data.get("services") or {}
        if not isinstance(raw_services, Mapping):
            return data
        merged: dict[str, Any] = {}
        overrides: dict[str, dict[str, Any]] = {}
        for name in {"openai", "anthropic", "gemini", "deepgram", *raw_services}:
            given = raw_services.get(name, {})
            if isinstance(given, RateLimitConfig):
                merged[name] = given
                continue
            if not isinstance(given, Mapping):
                merged[name] = given  # reported by validation
                continue
            overrides[name] = dict(given)
            merged[name] = {**preset_for(preset, name), **given}
        data["services"] = merged
        data["service_overrides"] = overrides
        return data

    @model_validator(mode="after")
    def _service_names(self) -> GovernorConfig:
        for name in self.services:
            if not name or len(name) > 64 or any(c in name for c in "/|"):
                raise ValueError(f"service name {name!r} must be 1-64 characters, "
                                 "without '/' or '|'")
        return self

    def service(self, name: str, model: str | None = None) -> RateLimitConfig:
        """The limits of ``name`` (its preset when not configured), with ``model``'s overrides."""
        cfg = self.services.get(name)
        if cfg is None:
            cfg = self._extra_services.get(name)
            if cfg is None:
                cfg = RateLimitConfig.model_validate(preset_for(self.preset, name))
                self._extra_services[name] = cfg
        return cfg.for_model(model)

    @property
    def preset(self) -> str:
        """The preset services start from: the environment's, or ``permissive``."""
        return "permissive" if self.defaults == "permissive" else self.environment

    @cached_property
    def _extra_services(self) -> dict[str, RateLimitConfig]:
        return {}

    def emergency_service(self, name: str) -> RateLimitConfig:
        """The emergency preset's limits, never looser than the service's normal ones."""
        normal = self.service(name)
        floor = RateLimitConfig.model_validate(preset_for("emergency", name))
        return floor.model_copy(update={
            "max_tokens": min(floor.max_tokens, normal.max_tokens),
            "refill_rate": min(floor.refill_rate, normal.refill_rate),
            "max_cost_per_minute": min(floor.max_cost_per_minute, normal.max_cost_per_minute),
            "llm_tokens_per_minute": normal.llm_tokens_per_minute,
            "cost_per_request": normal.cost_per_request,
            "audio_bytes_per_second": normal.audio_bytes_per_second,
        })

    def redacted_backend(self) -> str:
        """The backend URL with any password replaced by ``***``."""
        return redact_url(self.backend)

    @property
    def source(self) -> str:
        """Where this configuration came from: a TOML path, code, or the presets alone."""
        return self._source

    def summary(self, services: Iterable[str] = ()) -> dict[str, Any]:
        """What a process with this configuration enforces, as plain JSON values.

        Environment, preset, mode, the configuration's source, budgets per
        window, scopes when configured, and the limits of every configured
        service plus ``services`` (names met at run time). Each process publishes
        it with its heartbeat, so ``llm-governor status`` shows what the apps
        enforce without their configuration.
        """
        from ._version import __version__

        out: dict[str, Any] = {
            "version": __version__, "environment": self.environment, "preset": self.preset,
            "mode": self.mode, "config": self.source,
            "emergency_action": self.emergency_action,
            "budgets": {w: str(v) for w, v in self.budget.windows().items()},
            "services": {name: _service_summary(self.service(name))
                         for name in sorted({*self.services, *services})},
        }
        if self.scopes:
            out["scopes"] = {kind: v.model_dump(mode="json", exclude_none=True)
                             for kind, v in self.scopes.items()}
        return out


def _service_summary(cfg: RateLimitConfig) -> dict[str, Any]:
    data: dict[str, Any] = cfg.model_dump(mode="json", exclude_none=True)
    if not data.get("models"):
        data.pop("models", None)
    if "base_url" in data:
        data["base_url"] = redact_url(data["base_url"])
    return data


KNOWN_SERVICES = ("openai", "azure_openai", "anthropic", "gemini", "deepgram")
"""The services the SDK adapters report calls as."""

_INTERNAL_FIELDS = frozenset({"service_overrides"})


def unknown_key(key: str, model: type[BaseModel]) -> str:
    """``unknown key; did you mean 'max_tokens'? allowed: …`` for a key of ``model``."""
    allowed = [name for name in model.model_fields if name not in _INTERNAL_FIELDS]
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (allowed: {', '.join(allowed)})"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model whose key is the last part of ``loc`` (through tables and models)."""
    model: type[BaseModel] = GovernorConfig
    i = 0
    while i < len(loc) - 1:
        info = model.model_fields.get(str(loc[i]))
        if info is None:
            return None
        annotation = info.annotation
        args = get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model, i = annotation, i + 1
        elif get_origin(annotation) is dict and isinstance(args[1], type) \
                and issubclass(args[1], BaseModel):
            model, i = args[1], i + 2  # a table of models: the next part is its name
        else:
            return None
    return model if i == len(loc) - 1 else None


def _format_error(exc: ValidationError, source: str) -> str:
    return _format_errors(exc.errors(), source)


def _format_errors(errors: list[Any], source: str) -> str:
    lines = []
    for err in errors:
        parts = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
        loc = ".".join(str(p) for p in parts)
        value = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = _model_at(parts)
            msg = unknown_key(str(parts[-1]), model) if model is not None else "unknown key"
        elif err["type"] == "literal_error":
            msg = f"allowed: {err.get('ctx', {}).get('expected', msg)}"
        value_text = "{…}" if isinstance(value, Mapping) else repr(value)
        if isinstance(value, str) and "://" in value:
            value_text = repr(redact_url(value))
        key = loc or "(top level)"
        lines.append(f"{key} = {value_text}: {msg}")
    return f"invalid llm-governor configuration{source}:\n  " + "\n  ".join(lines)


def _drop(data: Any, loc: tuple[Any, ...]) -> str | None:
    """Remove the value at ``loc`` from the raw input (not a whole table); its key."""
    parts = [p for p in loc if not str(p).startswith("function-")]
    node = data
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    last = parts[-1] if parts else None
    if not isinstance(node, dict) or last not in node or isinstance(node[last], Mapping):
        return None
    del node[last]
    return str(last)


def _validate(raw: dict[str, Any], where: str) -> GovernorConfig:
    """Validate, or raise one ConfigError listing every problem at once.

    A rule that relates several fields (``max_interval >= min_interval``, a
    ``base_url``'s scheme, model overrides) only runs once each field is valid
    on its own; so the values already reported are left out and the rest
    validated again, up to three times, to report those rules too (a rule that
    names a value left out is not reported: it may hold once that is fixed).
    """
    try:
        return GovernorConfig.model_validate(raw)
    except ValidationError as exc:
        errors: list[Any] = list(exc.errors())
    seen = {(tuple(e["loc"]), e["msg"]) for e in errors}
    latest = errors
    trimmed = copy.deepcopy(raw)
    removed: set[str] = set()
    for _ in range(3):
        dropped = {key for e in latest if (key := _drop(trimmed, tuple(e["loc"])))}
        if not dropped:
            break
        removed |= dropped
        try:
            GovernorConfig.model_validate(trimmed)
            break
        except ValidationError as again:
            latest = [e for e in again.errors() if (tuple(e["loc"]), e["msg"]) not in seen
                      and not _mentions(e["msg"], removed)]
        seen |= {(tuple(e["loc"]), e["msg"]) for e in latest}
        errors += latest
    raise ConfigError(_format_errors(errors, where))


def _mentions(msg: str, keys: set[str]) -> bool:
    """Whether a rule's message reads one of ``keys`` (lists of allowed keys aside)."""
    text = re.split(r"; did you mean | \(allowed: ", msg)[0]
    return any(re.search(rf"\b{re.escape(k)}\b", text) for k in keys)


def config_warnings(cfg: GovernorConfig) -> list[str]:
    """What is valid but probably not meant: a service name that no SDK reports and no
    ``base_url`` declares (a typo such as ``opneai`` never applies to any SDK call)."""
    out = []
    for name in sorted(cfg.service_overrides):
        if name in KNOWN_SERVICES or cfg.service(name).base_url:
            continue
        close = difflib.get_close_matches(name, KNOWN_SERVICES, n=1, cutoff=0.7)
        hint = f"did you mean {close[0]!r}? " if close else ""
        out.append(f"services.{name}: not a service the SDKs report ({', '.join(KNOWN_SERVICES)})"
                   f" and no base_url: {hint}it applies only to calls that name it, such as "
                   f"@rate_limited({name!r})")
    return out


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None


def load_config(
    source: GovernorConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    environment: str | None = None,
    backend: str | None = None,
) -> GovernorConfig:
    """Build a :class:`GovernorConfig` from what the user gave, the environment and presets.

    ``source`` None reads ``$LLM_GOVERNOR_CONFIG`` when set. The environment is
    the explicit argument, else the source's ``environment``, else
    ``$LLM_GOVERNOR_ENV``, else ``$MONTAGE_ENV`` (an older name, still read for
    applications that set it), else development; when none of
    them chose it, services start from permissive limits (``defaults =
    "permissive"``) rather than the development preset, so an unconfigured
    governor never slows an app by itself. The backend is the explicit
    argument, else ``$LLM_GOVERNOR_BACKEND``, else the source's, else the SQLite
    file in the user's state directory.
    """
    where = ""
    if isinstance(source, GovernorConfig):
        raw: dict[str, Any] = source.model_dump(exclude={"services", "service_overrides"})
        raw["services"] = source.service_overrides
        if environment is not None:  # an environment chosen now brings its preset
            raw.pop("defaults", None)
        origin = source.source
    elif source is None:
        path = os.environ.get("LLM_GOVERNOR_CONFIG")
        raw = _read_toml(path) if path else {}
        where = f" in {path}" if path else ""
        origin = f"{os.path.abspath(path)} ($LLM_GOVERNOR_CONFIG)" if path else "presets"
    elif isinstance(source, (str, os.PathLike)):
        raw = _read_toml(source)
        where = f" in {os.fspath(source)}"
        origin = os.path.abspath(source)
    elif isinstance(source, Mapping):
        raw = dict(source)
        origin = "in code"
    else:
        raise ConfigError(
            f"config must be None, a TOML file path, a mapping or a GovernorConfig, "
            f"got {type(source).__name__}"
        )
    env = environment or raw.get("environment") or os.environ.get("LLM_GOVERNOR_ENV") \
        or os.environ.get("MONTAGE_ENV")
    if env is None:  # nothing chose an environment: stay out of the way until the provider
        raw.setdefault("defaults", "permissive")  # or a configured limit says otherwise
        env = "development"
    if isinstance(env, str):
        env = env.strip().lower()
    raw["environment"] = env
    chosen_backend = backend or os.environ.get("LLM_GOVERNOR_BACKEND") or raw.get("backend")
    if chosen_backend:
        raw["backend"] = chosen_backend
    cfg = _validate(raw, where)
    cfg._source = origin
    return cfg
