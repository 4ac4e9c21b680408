"""Retrying a gateway call later, as a deferred job with exponential backoff.

A job that calls a gateway and fails with a retryable error (``GatewayError.retryable``)
defers its own next run; the attempt counter travels in the job's payload::

    retry = next_retry(POLICY, payload, dedupe_key=f"push:{message_id}", now=runtime.now())
    if retry is not None:   # None: the attempts are spent; give up (open an alarm, mark failed)
        async with transaction(runtime.sessions) as session:
            await runtime.defer(session, job="notifications.push", **retry.deferral)

Each attempt has its own dedupe key (``<key>#<attempt>``): the running attempt still
holds the plain one, and a deferral skips a deferral whose key is queued or running.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# The payload key holding the attempt number (the first run has none: attempt 1).
ATTEMPT = "attempt"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``max_attempts`` runs in all; after failed attempt n the next waits
    ``first_delay × factor^(n−1)``, never more than ``max_delay``."""

    max_attempts: int = 5
    first_delay: timedelta = timedelta(seconds=30)
    max_delay: timedelta = timedelta(hours=1)
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.factor < 1 or self.first_delay <= timedelta(0) or self.max_delay < self.first_delay:
            raise ValueError(f"an impossible retry policy: {self}")

    def delay_after(self, attempt: int) -> timedelta:
        """How long to wait after failed attempt ``attempt`` (1 = the first run)."""
        # Capped before multiplying out, so attempt 200 does not overflow a float.
        exponent = min(attempt - 1, 64)
        seconds = min(self.first_delay.total_seconds() * self.factor**exponent, self.max_delay.total_seconds())
        return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class Retry:
    """The next attempt: when, under which dedupe key, with which payload."""

    attempt: int
    at: datetime
    dedupe_key: str
    payload: dict[str, Any]

    @property
    def deferral(self) -> dict[str, Any]:
        """The keyword arguments of ``defer_job`` beside ``job`` and ``now``."""
        return {"dedupe_key": self.dedupe_key, "at": self.at, "payload": self.payload}


def attempt_of(payload: Mapping[str, Any]) -> int:
    """Which attempt the run with ``payload`` is (1 for the first)."""
    return int(payload.get(ATTEMPT, 1))


def next_retry(policy: RetryPolicy, payload: Mapping[str, Any], *, dedupe_key: str, now: datetime) -> Retry | None:
    """The attempt after the failed run of ``payload``, or None when it was the last."""
    attempt = attempt_of(payload)
    if attempt >= policy.max_attempts:
        return None
    following = attempt + 1
    return Retry(
        attempt=following,
        at=now + policy.delay_after(attempt),
        dedupe_key=f"{dedupe_key}#{following}",
        payload={**payload, ATTEMPT: following},
    )
