"""The counters behind every limit, shared by all API processes: hits a minute per key
(:func:`count_hit`), hits over a rolling day (:func:`count_daily_hit`), and the failure
count that locks a login or binding source (doubling locks, ``AuthPolicy.lock_length``).
Callers count in a transaction of their own and commit it before the work it guards."""

from __future__ import annotations

import logging
import math
from datetime import date, datetime, timedelta

from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth.models import LoginFailure
from backend.auth.ratelimit import OverLimitMemo, RepeatedRefusal, source_of
from backend.auth.service.policy import AuthPolicy
from backend.errors import DomainError, RateLimited
from backend.observability import observe_throttle_refusal

log = logging.getLogger("shuiwu.sms")
# The days this process has raised the cap's alert for (once a day and process is enough).
_cap_alerted: set[date] = set()


def _source(ip: str | None) -> str:
    return source_of(ip)[:64]


async def _claim_against_lockout(session: AsyncSession, *, name: str, source: str, now: datetime, policy: AuthPolicy) -> int:
    statement = (
        insert(LoginFailure)
        .values(username=name, source=source, failures=1, last_failed_at=now)
        .on_conflict_do_update(
            index_elements=["username", "source"],
            set_={
                # A count quiet for longer than the longest lock starts over.
                "failures": text(
                    "CASE WHEN login_failures.last_failed_at < :forget_before THEN 1 ELSE login_failures.failures + 1 END"
                ).bindparams(forget_before=now - timedelta(seconds=policy.lockout_max_s)),
                "last_failed_at": now,
            },
        )
        .returning(LoginFailure.__table__.c.failures, LoginFailure.__table__.c.locked_until)  # type: ignore[attr-defined]
    )
    # The upsert holds the row lock until this transaction ends, so parallel attempts for
    # one name and source are counted one after another, each seeing the ones before it.
    failures, locked_until = (await session.execute(statement)).one()
    if locked_until is not None and locked_until > now:
        # Raising rolls this count back: attempts refused while locked do not lengthen it.
        raise errors.AccountLocked.until(locked_until, now=now)
    if failures >= policy.max_failures:
        await session.execute(
            update(LoginFailure)
            .where(LoginFailure.username == name, LoginFailure.source == source)  # type: ignore[arg-type]
            .values(locked_until=now + policy.lock_length(failures))
        )
    return int(failures)


def _minute(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


async def count_hit(
    session: AsyncSession, *, key: str, now: datetime, limit: int, over_limit: OverLimitMemo | None = None
) -> int:
    """Count one hit for ``key`` in ``now``'s minute, shared by every API process (one
    ``auth_throttle`` row per key and minute); :class:`RateLimited` past ``limit``.
    The row lock is held until the caller's transaction ends: commit it on its own.

    With ``over_limit`` (the app's memo), a key this process already saw refused at
    ``limit`` in this minute is refused at once (:class:`RepeatedRefusal`, nothing
    counted, no database round trip: the row would refuse it too), and a refusal the
    database decides is remembered there."""
    minute = _minute(now)
    if over_limit is not None and over_limit.knows_over(key, limit, minute):
        observe_throttle_refusal(key)
        raise RepeatedRefusal()
    hits: int = (await session.execute(
        text(
            "INSERT INTO auth_throttle AS t (key, minute, hits) VALUES (:key, :minute, 1) "
            "ON CONFLICT (key, minute) DO UPDATE SET hits = t.hits + 1 RETURNING hits"
        ),
        {"key": key[:100], "minute": minute},
    )).scalar_one()
    if hits > limit:
        if over_limit is not None:
            over_limit.remember_over(key, limit, minute)
        observe_throttle_refusal(key)
        raise RateLimited()
    return hits


async def count_daily_hit(session: AsyncSession, *, key: str, now: datetime, limit: int, refusal: DomainError) -> int:
    """Count one hit for ``key`` unless ``limit`` hits were counted in the 24 hours before
    ``now`` (a rolling day: no midnight to wait for); then raise ``refusal``. Concurrent
    callers for one key queue on an advisory lock held until the transaction ends."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key[:100]})
    used = int((await session.execute(
        text("SELECT coalesce(sum(hits), 0) FROM auth_throttle WHERE key = :key AND minute > :since"),
        {"key": key[:100], "since": _minute(now) - timedelta(days=1)},
    )).scalar_one())
    if used >= limit:
        raise refusal
    return await count_hit(session, key=key, now=now, limit=limit)


async def _count_sms_send(
    session: AsyncSession, *, now: datetime, policy: AuthPolicy, ip: str | None, over_limit: OverLimitMemo | None
) -> None:
    # SMS pumping costs money: every request that may send one counts per address and in all.
    await count_hit(session, key=f"sms:ip:{_source(ip)}", now=now, limit=policy.sms_codes_per_ip_per_minute,
                    over_limit=over_limit)
    await count_hit(session, key="sms:all", now=now, limit=policy.sms_codes_per_minute, over_limit=over_limit)


async def claim_sms(session: AsyncSession, *, now: datetime, policy: AuthPolicy) -> int:
    """Claim one of today's ``sms_daily_cap`` SMS for the whole installation (the
    utility's day), before the SMS is sent; :class:`SmsDailyCapReached` when they are
    all claimed, with an alert in the log. One statement, shared by every process: the
    day's row lock is held until the caller's transaction ends, so commit it on its own.
    A claim is never given back (a send that failed may still have cost), so no more
    than the cap is ever sent. Returns how many are claimed today."""
    day = now.astimezone(policy.tz).date()
    claimed = (await session.execute(
        text(
            "INSERT INTO sms_sends AS s (day, claimed) VALUES (:day, 1) "
            "ON CONFLICT (day) DO UPDATE SET claimed = s.claimed + 1 WHERE s.claimed < :cap RETURNING claimed"
        ),
        {"day": day, "cap": policy.sms_daily_cap},
    )).scalar_one_or_none()
    if claimed is None:
        observe_throttle_refusal("sms:day")
        if day not in _cap_alerted:
            _cap_alerted.add(day)
            log.error("ALERT: the daily SMS cap of %d (SHUIWU_SMS_DAILY_CAP) is reached for %s: every further login "
                      "and binding code is refused until midnight. Unless residents really asked for that many, "
                      "someone is pumping SMS: look at the operation log's 发送验证码 entries by address.",
                      policy.sms_daily_cap, day.isoformat())
        raise errors.SmsDailyCapReached()
    if claimed == math.ceil(policy.sms_daily_cap * 0.8):
        log.warning("80%% of the daily SMS cap (%d of %d, SHUIWU_SMS_DAILY_CAP) are used on %s",
                    claimed, policy.sms_daily_cap, day.isoformat())
    return int(claimed)
