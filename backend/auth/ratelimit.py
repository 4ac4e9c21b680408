"""In-process token buckets, per API process: per API client, and for anonymous callers
per client address and in all.

A bucket admits ``rate_per_minute`` requests a minute with bursts up to that many; with
N processes behind a balancer the effective limit is N times that, which is documented
for operators rather than paid for with a shared store. The limits that must hold across
processes (login attempts, SMS codes) are counted in PostgreSQL instead
(``service.count_hit``); :class:`OverLimitMemo` spares the database the refusals it has
already decided this minute.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime

from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.errors import RateLimited


def source_of(ip: str | None) -> str:
    """The address a throttle or lockout counts against: an IPv4 address as is, an IPv6
    address as its /64 (one subscriber's network: its 2^64 addresses are one caller)."""
    if not ip:
        return ""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """One token bucket per key, each refilled at its rate per minute. At most
    ``max_keys`` are kept: past that, buckets idle long enough to be full again are
    dropped (a full bucket and a missing one admit the same), and then the oldest, down
    to 80 % of ``max_keys``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}
        self._max_keys = max_keys

    def take(self, key: Hashable, rate_per_minute: int, burst: int | None = None) -> bool:
        """Take one token from ``key``'s bucket, which refills at ``rate_per_minute`` and
        holds at most ``burst`` tokens (default: the whole minute's); False when empty."""
        capacity = float(min(burst, rate_per_minute) if burst else rate_per_minute)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget_idle(now)
            bucket = self._buckets[key] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate_per_minute / 60.0)
        bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_idle(self, now: float) -> None:
        # Prune down to a low-water mark, not just below the cap: otherwise a steady stream
        # of fresh addresses (one bucket going idle per new one) rescans the whole map on
        # every request. A minute idle refills any bucket completely; past that, under a
        # flood, the newest are kept (the global bucket still holds).
        low_water = self._max_keys * 4 // 5
        busy = [(key, bucket) for key, bucket in self._buckets.items() if now - bucket.updated < 60.0]
        if len(busy) > low_water:
            busy.sort(key=lambda item: item[1].updated)
            busy = busy[len(busy) - low_water:]
        self._buckets = dict(busy)


class ClientRateLimiter:
    """Each API client's own rate (``rate_per_minute``), on every route it calls."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets = TokenBuckets(clock)

    def check(self, principal: Principal) -> None:
        """Take one token for an API client; raise :class:`RateLimited` when empty."""
        if principal.kind is not PrincipalKind.client or not principal.rate_per_minute:
            return
        if not self._buckets.take(principal.id, principal.rate_per_minute):
            raise RateLimited()


class AnonymousThrottle:
    """Requests without a token (logins, codes, ``/oauth/token``): ``per_ip_per_minute``
    from one client address (at most ``burst_per_ip`` at once) and ``per_minute`` from
    everyone together."""

    def __init__(self, *, per_ip_per_minute: int, per_minute: int, burst_per_ip: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_ip_per_minute = per_ip_per_minute
        self.per_minute = per_minute
        # One address may not fire its whole minute at once: a login flood then runs at the
        # refill rate after this many, instead of after the minute's allowance.
        self.burst_per_ip = burst_per_ip
        self._by_ip = TokenBuckets(clock)
        self._everyone = TokenBuckets(clock)

    def check(self, ip: str | None) -> None:
        """Admit one anonymous request from ``ip``; raise :class:`RateLimited` when either
        its address's bucket or the global one is empty (a refusal takes no global token)."""
        if not self._by_ip.take(source_of(ip), self.per_ip_per_minute, self.burst_per_ip):
            raise RateLimited()
        if not self._everyone.take("", self.per_minute):
            raise RateLimited()


class RepeatedRefusal(RateLimited):
    """A throttle refusal this process already gave for the same key, limit and minute,
    decided by the database then and answered from :class:`OverLimitMemo` now. Not
    audited: the first refusal of the key in its minute was (``run_mutation``), and
    every refusal is counted in ``shuiwu_throttle_refusals_total``."""

    audited = False


class OverLimitMemo:
    """The cross-process throttle keys (``service.count_hit``) this process has seen
    refused, for their limit and wall-clock minute, so a key known to be over is refused
    again without a database round trip.

    The ``auth_throttle`` row stays the truth: a key's hits in a minute only grow, so once
    the database refused a key in a minute, it refuses every later hit of that minute, in
    any process. The memo only repeats such refusals; a key it does not know is asked of
    the database, and each new minute starts empty. One per app (create_app), never
    module-global: processes and test databases do not share what they saw. At most
    ``max_keys`` keys a minute are kept (past that, keys are asked of the database again).
    """

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._max_keys = max_keys
        self._minute: datetime | None = None
        self._over: set[tuple[str, int]] = set()

    def knows_over(self, key: str, limit: int, minute: datetime) -> bool:
        """Whether ``key`` was refused at ``limit`` in ``minute`` (a minute other than the
        latest one remembered is never known: it is asked of the database)."""
        return minute == self._minute and (key, limit) in self._over

    def remember_over(self, key: str, limit: int, minute: datetime) -> None:
        """Record that the database refused ``key`` at ``limit`` in ``minute``."""
        if self._minute is None or minute > self._minute:
            self._minute, self._over = minute, set()
        elif minute < self._minute:
            return  # a request that started before the minute turned: its minute is over
        if len(self._over) < self._max_keys:
            self._over.add((key, limit))
