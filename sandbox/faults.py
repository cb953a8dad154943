"""Injected upstream faults: their settings, their validation, and the seeded dice that pick one per call."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate

from sandbox.refusals import ERROR_SHAPES

# Each call draws one number; the rates cut [0, 1) into consecutive slices in this order.
# "reject" is last, so adding it left the slices (and seeded runs) of the others as they were.
FAULT_KINDS = ("error", "throttle", "timeout", "drop", "malformed", "reject")
RATE_FIELDS = tuple(f"{kind}_rate" for kind in FAULT_KINDS)
RETRY_AFTER_FORMATS = ("seconds", "http-date")
# "account": an injected 429 speaks for the account, as Oktopost's do, and every call gets 429 until its
# Retry-After has passed; "request": only the one call is refused.
THROTTLE_SCOPES = ("account", "request")
MAX_LATENCY_MS = 600_000
MAX_RETRY_AFTER_S = 86_400


class FaultConfigError(ValueError):
    """A fault setting out of range; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """The faults in force. Rates are probabilities per `/v2/` call and add up to at most 1."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    timeout_rate: float = 0.0
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    reject_rate: float = 0.0  # HTTP 200 with `Result: false`: a refusal, not a transient fault
    retry_after_s: int | None = 1  # None: every 429 goes without Retry-After
    retry_after_format: str = "seconds"
    throttle_scope: str = "account"
    # Not a slice of the fault dice: the share of newly connected credentials answered `Status: invalid`.
    invalid_rate: float = 0.0
    error_shape: str = "object"  # the form of `Errors` in every refusal (see sandbox.refusals)
    seed: int | None = None

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def updated(self, changes: Mapping[str, object]) -> FaultConfig:
        """A copy with `changes` applied; FaultConfigError names the first bad field."""
        known = {f.name for f in dataclasses.fields(self)}
        values: dict[str, object] = {}
        for name, value in changes.items():
            if name not in known:
                raise FaultConfigError(name, f"unknown fault setting (known: {', '.join(sorted(known))})")
            values[name] = _validated(name, value)
        named = {name: float(values[name]) for name in RATE_FIELDS if name in values}  # type: ignore[arg-type]
        if sum(named.values()) > 1.0 + 1e-9:
            raise FaultConfigError(next(iter(named)), "the fault rates together must not exceed 1")
        if sum(named.get(name, getattr(self, name)) for name in RATE_FIELDS) > 1.0 + 1e-9:
            # the rates set now win: those set before and not named now make way (set to 0)
            values.update({name: 0.0 for name in RATE_FIELDS if name not in named})
        return dataclasses.replace(self, **values)  # type: ignore[arg-type]


_CHOICES = {
    "retry_after_format": RETRY_AFTER_FORMATS,
    "throttle_scope": THROTTLE_SCOPES,
    "error_shape": ERROR_SHAPES,
}
_NUMBER_RANGES = {
    **{name: (1.0, "a number from 0 to 1") for name in (*RATE_FIELDS, "invalid_rate")},
    "latency_ms": (MAX_LATENCY_MS, f"a number of milliseconds from 0 to {MAX_LATENCY_MS}"),
}


def _validated(name: str, value: object) -> object:
    if name in _NUMBER_RANGES:
        highest, described = _NUMBER_RANGES[name]
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not is_number or not 0.0 <= float(value) <= highest:  # type: ignore[arg-type]
            raise FaultConfigError(name, f"must be {described}")
        return float(value)  # type: ignore[arg-type]
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise FaultConfigError(name, f"must be one of {', '.join(_CHOICES[name])}")
        return value
    if name == "retry_after_s" and value is not None:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_RETRY_AFTER_S:
            raise FaultConfigError(
                name, f"must be a whole number of seconds from 0 to {MAX_RETRY_AFTER_S}, or null"
            )
        return value
    # seed, or a null retry_after_s
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise FaultConfigError(name, "must be an integer or null")
    return value


class Faults:
    """The fault settings in force and the random source that decides, call by call, which fault strikes."""

    def __init__(self, initial: FaultConfig) -> None:
        self._initial = initial
        self._config = initial
        self._random = random.Random(initial.seed)  # noqa: S311 - fault injection, not cryptography

    @property
    def config(self) -> FaultConfig:
        return self._config

    def configure(self, changes: Mapping[str, object]) -> FaultConfig:
        """Applies a partial update; a `seed` in it restarts the dice so runs can be repeated."""
        self._config = self._config.updated(changes)
        if "seed" in changes:
            self._random.seed(self._config.seed)
        return self._config

    def reset(self) -> None:
        self._config = self._initial
        self._random.seed(self._initial.seed)

    def roll(self) -> str | None:
        """The fault kind for this call, or None for an honest answer."""
        config = self._config
        draw = self._random.random()
        threshold = 0.0
        for kind, name in zip(FAULT_KINDS, RATE_FIELDS, strict=True):
            threshold += getattr(config, name)
            if draw < threshold:
                return kind
        return None

    def credential_status(self) -> str:
        """`valid`, or `invalid` for a share `invalid_rate` of the credentials connected."""
        rate = self._config.invalid_rate
        # No draw when the rate is 0, so seeded runs without it roll the same faults as before.
        return "invalid" if rate > 0 and self._random.random() < rate else "valid"

    def retry_after(self, seconds: float) -> str:
        """A Retry-After value in the configured format."""
        whole = max(0, math.ceil(seconds))
        if self._config.retry_after_format == "http-date":
            return formatdate(math.ceil(time.time()) + whole, usegmt=True)
        return str(whole)

    def retry_after_headers(self, seconds: float) -> tuple[tuple[str, str], ...]:
        """The Retry-After header of a 429 waiting `seconds`; none when `retry_after_s` is null."""
        if self._config.retry_after_s is None:
            return ()
        return (("retry-after", self.retry_after(seconds)),)
