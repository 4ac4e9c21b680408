"""Per-client token buckets for API clients (in-process, per API process).

Each process admits ``rate_per_minute`` requests a minute per client with bursts up to
that many; with N processes behind a balancer the effective limit is N times that,
which is documented for operators rather than paid for with a shared store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.errors import RateLimited


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class ClientRateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}

    def check(self, principal: Principal) -> None:
        """Take one token for an API client; raise :class:`RateLimited` when empty."""
        if principal.kind is not PrincipalKind.client or not principal.rate_per_minute:
            return
        capacity = float(principal.rate_per_minute)
        now = self._clock()
        bucket = self._buckets.get(principal.id)
        if bucket is None:
            bucket = self._buckets[principal.id] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * capacity / 60.0)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise RateLimited()
        bucket.tokens -= 1.0
