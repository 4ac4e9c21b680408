"""The memo of throttle keys already past their minute's limit (``OverLimitMemo``): a key
the database refused in a minute is refused again without asking it; the next minute or a
different limit asks the database again (two apps: tests/graphql/test_auth_abuse.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.auth.ratelimit import OverLimitMemo, RepeatedRefusal
from backend.auth.service import claim_login_attempt, count_hit
from backend.errors import ErrorCode, RateLimited
from backend.observability import registry
from tests.auth.support import NOW, POLICY

MINUTE = NOW.replace(second=0, microsecond=0)


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements sent to the database inside the block."""
    sent: list[str] = []

    def record(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def login_refusals() -> float:
    return registry.get_sample_value("shuiwu_throttle_refusals_total", {"throttle": "login:ip"}) or 0.0


def a_key() -> str:
    return f"test:memo:{uuid.uuid4().hex[:8]}"


async def refuse_once(session: AsyncSession, memo: OverLimitMemo, key: str, *, limit: int) -> RateLimited:
    """Hit ``key`` until the database refuses it; return that refusal."""
    for _ in range(limit):
        await count_hit(session, key=key, now=NOW, limit=limit, over_limit=memo)
    with pytest.raises(RateLimited) as refused:
        await count_hit(session, key=key, now=NOW, limit=limit, over_limit=memo)
    return refused.value


async def test_a_key_the_database_refused_is_refused_again_that_minute_without_a_round_trip(
    session: AsyncSession, engine: AsyncEngine
) -> None:
    memo, key = OverLimitMemo(), a_key()
    decided = await refuse_once(session, memo, key, limit=2)

    with statements(engine) as sent, pytest.raises(RepeatedRefusal) as repeated:
        await count_hit(session, key=key, now=NOW + timedelta(seconds=59), limit=2, over_limit=memo)

    assert sent == []
    assert repeated.value.code == decided.code == ErrorCode.RATE_LIMITED
    # The database's refusal is audited; the repeats are only counted in the metric.
    assert (decided.audited, repeated.value.audited) == (True, False)


async def test_the_next_minute_or_another_limit_asks_the_database_again(session: AsyncSession, engine: AsyncEngine) -> None:
    memo, key = OverLimitMemo(), a_key()
    await refuse_once(session, memo, key, limit=1)

    with statements(engine) as sent:
        next_minute = await count_hit(session, key=key, now=NOW + timedelta(minutes=1), limit=1, over_limit=memo)
        other_limit = await count_hit(session, key=key, now=NOW + timedelta(minutes=1), limit=5, over_limit=memo)

    assert (next_minute, other_limit) == (1, 2)
    assert len(sent) == 2


async def test_a_login_attempt_from_an_address_over_its_minute_takes_no_database_work(
    session: AsyncSession, engine: AsyncEngine
) -> None:
    memo, address = OverLimitMemo(), f"198.18.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    for n in range(POLICY.login_attempts_per_ip_per_minute):
        await claim_login_attempt(session, username=f"spray-{n}", now=NOW, policy=POLICY, ip=address, over_limit=memo)
    with pytest.raises(RateLimited):
        await claim_login_attempt(session, username="spray-x", now=NOW, policy=POLICY, ip=address, over_limit=memo)
    counted_before = login_refusals()

    with statements(engine) as sent, pytest.raises(RepeatedRefusal):
        await claim_login_attempt(session, username="spray-y", now=NOW, policy=POLICY, ip=address, over_limit=memo)

    assert sent == []
    assert login_refusals() == counted_before + 1


def test_only_the_latest_minute_is_remembered_and_a_full_memo_forgets_nothing_it_must_not() -> None:
    memo = OverLimitMemo(max_keys=2)
    memo.remember_over("a", 1, MINUTE)
    memo.remember_over("b", 1, MINUTE)
    memo.remember_over("c", 1, MINUTE)  # full: "c" is asked of the database next time
    assert [memo.knows_over(key, 1, MINUTE) for key in "abc"] == [True, True, False]

    memo.remember_over("c", 1, MINUTE + timedelta(minutes=1))
    # A request that started before the minute turned: its minute is asked of the database.
    memo.remember_over("a", 1, MINUTE)
    assert not memo.knows_over("a", 1, MINUTE)
    assert memo.knows_over("c", 1, MINUTE + timedelta(minutes=1))
    assert not memo.knows_over("a", 1, MINUTE + timedelta(minutes=1))
