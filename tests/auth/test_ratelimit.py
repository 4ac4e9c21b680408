"""Per-client token buckets (backend/auth/ratelimit.py), driven by an injected clock."""

from __future__ import annotations

import pytest

from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.auth.ratelimit import ClientRateLimiter
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
