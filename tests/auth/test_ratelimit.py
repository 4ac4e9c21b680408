"""Token buckets (backend/auth/ratelimit.py) per API client and for anonymous callers,
driven by an injected clock."""

from __future__ import annotations

import pytest

from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.auth.ratelimit import AnonymousThrottle, ClientRateLimiter, TokenBuckets, source_of
from backend.errors import ErrorCode, RateLimited


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


def client(client_id: int = 1, *, rate_per_minute: int | None = 6) -> Principal:
    return Principal(kind=PrincipalKind.client, id=client_id, name="物业平台", rate_per_minute=rate_per_minute)


def admitted(limiter: ClientRateLimiter, principal: Principal, requests: int) -> int:
    """How many of ``requests`` back-to-back requests the limiter lets through."""
    count = 0
    for _ in range(requests):
        try:
            limiter.check(principal)
        except RateLimited:
            continue
        count += 1
    return count


def test_a_client_may_burst_its_rate_per_minute_and_the_next_request_is_refused() -> None:
    limiter = ClientRateLimiter(clock=FakeClock())
    caller = client(rate_per_minute=6)
    for _ in range(6):
        limiter.check(caller)

    with pytest.raises(RateLimited) as refused:
        limiter.check(caller)

    assert refused.value.code is ErrorCode.RATE_LIMITED


def test_the_bucket_refills_at_the_rate_per_minute() -> None:
    clock = FakeClock()
    limiter = ClientRateLimiter(clock=clock)
    caller = client(rate_per_minute=6)
    assert admitted(limiter, caller, 6) == 6

    clock.advance(9.9)
    assert admitted(limiter, caller, 1) == 0
    clock.advance(0.1)
    assert admitted(limiter, caller, 2) == 1
    clock.advance(30)
    assert admitted(limiter, caller, 5) == 3


def test_an_idle_client_saves_up_no_more_than_one_minutes_worth() -> None:
    clock = FakeClock()
    limiter = ClientRateLimiter(clock=clock)
    caller = client(rate_per_minute=6)
    limiter.check(caller)

    clock.advance(3600)

    assert admitted(limiter, caller, 10) == 6


def test_each_client_has_its_own_bucket() -> None:
    limiter = ClientRateLimiter(clock=FakeClock())
    assert admitted(limiter, client(1), 7) == 6

    assert admitted(limiter, client(2), 7) == 6


@pytest.mark.parametrize("kind", [PrincipalKind.staff, PrincipalKind.resident])
def test_staff_and_residents_are_never_limited(kind: PrincipalKind) -> None:
    limiter = ClientRateLimiter(clock=FakeClock())
    caller = Principal(kind=kind, id=1, name="王五", rate_per_minute=1)

    assert admitted(limiter, caller, 1000) == 1000


def test_a_client_without_a_rate_is_not_limited() -> None:
    limiter = ClientRateLimiter(clock=FakeClock())

    assert admitted(limiter, client(rate_per_minute=None), 1000) == 1000


# --------------------------------------------------------------------------- anonymous callers


def anonymous_admitted(throttle: AnonymousThrottle, ip: str, requests: int) -> int:
    count = 0
    for _ in range(requests):
        try:
            throttle.check(ip)
        except RateLimited:
            continue
        count += 1
    return count


def test_an_address_gets_its_anonymous_rate_and_refills_at_it() -> None:
    clock = FakeClock()
    throttle = AnonymousThrottle(per_ip_per_minute=6, per_minute=1000, clock=clock)

    assert anonymous_admitted(throttle, "203.0.113.9", 10) == 6
    assert anonymous_admitted(throttle, "198.51.100.7", 10) == 6
    clock.advance(10)
    assert anonymous_admitted(throttle, "203.0.113.9", 10) == 1


def test_an_address_sends_at_most_its_burst_at_once_and_then_the_refill_rate() -> None:
    clock = FakeClock()
    throttle = AnonymousThrottle(per_ip_per_minute=300, per_minute=100_000, burst_per_ip=30, clock=clock)

    assert anonymous_admitted(throttle, "203.0.113.9", 300) == 30
    clock.advance(1)
    assert anonymous_admitted(throttle, "203.0.113.9", 300) == 5
    clock.advance(600)  # a long pause refills the burst, never more
    assert anonymous_admitted(throttle, "203.0.113.9", 300) == 30


def test_everyone_together_gets_the_global_rate_and_a_refused_address_takes_none_of_it() -> None:
    throttle = AnonymousThrottle(per_ip_per_minute=2, per_minute=5, clock=FakeClock())

    assert anonymous_admitted(throttle, "203.0.113.9", 50) == 2
    admitted = [anonymous_admitted(throttle, f"192.0.2.{n}", 1) for n in range(1, 6)]

    assert admitted == [1, 1, 1, 0, 0]


def test_buckets_of_a_flood_of_addresses_are_forgotten_once_they_would_be_full() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(clock, max_keys=100)
    for n in range(100):
        buckets.take(n, 6)
    clock.advance(61)

    buckets.take("late", 6)

    assert len(buckets._buckets) == 1


def test_a_steady_stream_of_fresh_addresses_prunes_the_full_map_rarely() -> None:
    # One new address every 0.6 s keeps exactly one bucket a minute old each time the map
    # is full: pruning only the idle ones would rescan the whole map on every request.
    clock = FakeClock()
    buckets = TokenBuckets(clock, max_keys=100)
    scans = 0
    prune = buckets._forget_idle

    def counted_prune(now: float) -> None:
        nonlocal scans
        scans += 1
        prune(now)

    buckets._forget_idle = counted_prune  # type: ignore[method-assign]
    for n in range(100):
        buckets.take(n, 6)
        clock.advance(0.6)

    buckets.take("first over", 6)
    assert len(buckets._buckets) == 81
    for n in range(200):
        clock.advance(0.6)
        buckets.take(f"fresh {n}", 6)

    assert scans <= 11
    assert len(buckets._buckets) <= 100


def test_an_ipv6_caller_is_counted_by_its_64_network() -> None:
    throttle = AnonymousThrottle(per_ip_per_minute=2, per_minute=1000, clock=FakeClock())

    admitted = [anonymous_admitted(throttle, f"2001:db8:1:2::{n:x}", 1) for n in range(1, 4)]

    assert admitted == [1, 1, 0]
    assert source_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source_of("203.0.113.9") == "203.0.113.9"
