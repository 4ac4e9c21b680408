"""Daily caps per phone, over a rolling 24 hours: codes sent, and code attempts, so a
phone's code cannot be ground down by asking for a new one every minute."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth import service as auth
from backend.errors import DomainError, ErrorCode, RateLimited
from tests.auth.support import NOW, POLICY, FakeSms

PHONE = "13812345679"
CAPPED = dataclasses.replace(POLICY, sms_codes_per_phone_per_day=3, code_attempts_per_phone_per_day=4)


async def ask_for_code(session: AsyncSession, sms: FakeSms, *, at: timedelta, phone: str = PHONE, ip: str = "203.0.113.9") -> None:
    """As requestLoginCode does it: count the request, then send."""
    await auth.claim_code_send(session, phone=phone, now=NOW + at, policy=CAPPED, ip=ip)
    await auth.request_login_code(session, phone=phone, now=NOW + at, policy=CAPPED, sender=sms)


async def test_a_phone_gets_its_daily_codes_and_then_none_until_a_day_has_passed(session: AsyncSession) -> None:
    sms = FakeSms()
    for minute in (0, 2, 4):
        await ask_for_code(session, sms, at=timedelta(minutes=minute))

    with pytest.raises(errors.CodeDailyLimit) as refused:
        await auth.claim_code_send(session, phone=PHONE, now=NOW + timedelta(hours=23, minutes=59), policy=CAPPED, ip="198.51.100.7")

    assert (refused.value.code, refused.value.field) == (ErrorCode.CODE_DAILY_LIMIT, "phone")
    assert len(sms.sent) == 3
    # Rolling: the first code drops out of the window a day after it was sent.
    await ask_for_code(session, sms, at=timedelta(days=1, minutes=1))
    assert len(sms.sent) == 4


async def test_code_attempts_per_phone_are_capped_across_new_codes(session: AsyncSession) -> None:
    sms = FakeSms()
    wrong_attempts = 0
    for minute in (0, 2, 4):
        await ask_for_code(session, sms, at=timedelta(minutes=minute))
        for _ in range(2):
            try:
                await auth.claim_code_attempt(session, phone=PHONE, now=NOW + timedelta(minutes=minute), policy=CAPPED, ip="203.0.113.9")
            except errors.CodeAttemptsDailyLimit:
                continue
            wrong_attempts += 1

    with pytest.raises(errors.CodeAttemptsDailyLimit) as refused:
        await auth.claim_code_attempt(session, phone=PHONE, now=NOW + timedelta(minutes=5), policy=CAPPED, ip="198.51.100.7")

    assert wrong_attempts == 4
    assert (refused.value.code, refused.value.field) == (ErrorCode.CODE_DAILY_LIMIT, "code")
    attempts = (await session.execute(text("SELECT sum(attempts) FROM one_time_codes WHERE phone = :p"), {"p": PHONE})).scalar_one()
    assert attempts == 4


async def test_a_malformed_number_is_refused_before_anything_is_counted(session: AsyncSession) -> None:
    with pytest.raises(DomainError) as refused:
        await auth.claim_code_send(session, phone="1234", now=NOW, policy=CAPPED, ip="203.0.113.9")

    assert (refused.value.code, refused.value.field) == (ErrorCode.INVALID, "phone")
    assert (await session.execute(text("SELECT count(*) FROM auth_throttle"))).scalar_one() == 0


async def test_old_throttle_rows_are_purged(session: AsyncSession) -> None:
    await auth.count_hit(session, key="sms:all", now=NOW, limit=10)
    await auth.count_hit(session, key="sms:all", now=NOW + timedelta(days=1, minutes=1), limit=10)

    await auth.purge_expired(session, now=NOW + timedelta(days=1, minutes=1))

    minutes = (await session.execute(text("SELECT minute FROM auth_throttle WHERE key = 'sms:all'"))).scalars().all()
    assert minutes == [NOW + timedelta(days=1, minutes=1)]


async def test_a_minute_limit_refuses_past_its_count_and_the_next_minute_starts_over(session: AsyncSession) -> None:
    for _ in range(2):
        await auth.count_hit(session, key="login:ip:203.0.113.9", now=NOW, limit=2)

    with pytest.raises(RateLimited):
        await auth.count_hit(session, key="login:ip:203.0.113.9", now=NOW + timedelta(seconds=59), limit=2)
    assert await auth.count_hit(session, key="login:ip:203.0.113.9", now=NOW + timedelta(seconds=60), limit=2) == 1
