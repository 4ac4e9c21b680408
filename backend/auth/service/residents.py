"""Residents (住户): SMS login codes (throttled before anything is sent: SMS pumping
costs money) and the code login that registers a resident on first use."""

from __future__ import annotations

import logging
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth.models import OneTimeCode, PrincipalKind, Resident
from backend.auth.ratelimit import OverLimitMemo
from backend.auth.security import code_digest
from backend.auth.service.policy import AuthPolicy, SmsSender, TokenPair
from backend.auth.service.sessions import _open_session
from backend.auth.service.throttles import _count_sms_send, _source, claim_sms, count_daily_hit, count_hit
from backend.errors import DomainError, ErrorCode
from backend.gateways.errors import GatewayError

log = logging.getLogger("shuiwu.sms")

MOBILE = re.compile(r"^1[3-9]\d{9}$")
CODE_RESEND_S = 60
CODE_MAX_ATTEMPTS = 5
# The hash of a code row that is only a claim on the resend minute (no code yet): never a
# digest, so never matched; its expiry is its creation, so it is never live either.
CLAIMED = ""


def codes_sent_key(phone: str) -> str:
    """The throttle counter of SMS codes sent to ``phone`` (login and binding codes)."""
    return f"sms:phone:{phone}"


def code_attempts_key(phone: str) -> str:
    """The throttle counter of login-code attempts for ``phone``."""
    return f"code:phone:{phone[:20]}"


def _mobile(phone: str) -> str:
    phone = phone.strip()
    if not MOBILE.match(phone):
        raise DomainError("手机号格式错误", "Malformed mobile number", field="phone", code=ErrorCode.INVALID)
    return phone


async def _refuse_recent_code(session: AsyncSession, phone: str, now: datetime) -> None:
    recent = await session.execute(
        select(OneTimeCode.id).where(  # type: ignore[call-overload]
            OneTimeCode.phone == phone, OneTimeCode.created_at > now - timedelta(seconds=CODE_RESEND_S)
        )
    )
    if recent.first() is not None:
        raise errors.CodeRateLimited(field="phone")


async def claim_code_send(
    session: AsyncSession, *, phone: str, now: datetime, policy: AuthPolicy, ip: str | None,
    over_limit: OverLimitMemo | None = None,
) -> None:
    """Count a request for a login code before anything is sent; commit it on its own.

    Refused, with nothing counted: a malformed number, a code sent to it under a minute
    ago, ``sms_codes_per_phone_per_day`` codes to it in the last 24 hours
    (:class:`CodeDailyLimit`), and past ``sms_codes_per_ip_per_minute`` from the address
    or ``sms_codes_per_minute`` in all (:class:`RateLimited`), and past the installation's
    ``sms_daily_cap`` for the day (:class:`SmsDailyCapReached`): SMS pumping costs money.

    Counted, it takes the phone's resend minute (a code row with no code yet, which
    :func:`request_login_code` fills): a second request before the first code is sent is
    refused (:class:`CodeRateLimited`), so a double tap sends one SMS.
    """
    phone = _mobile(phone)
    await count_daily_hit(session, key=codes_sent_key(phone), now=now, limit=policy.sms_codes_per_phone_per_day,
                          refusal=errors.CodeDailyLimit(field="phone"))
    # Under the phone's lock, so two requests at once cannot both pass.
    await _refuse_recent_code(session, phone, now)
    await _count_sms_send(session, now=now, policy=policy, ip=ip, over_limit=over_limit)
    # Last: a request the limits above refuse claims none of the day's SMS.
    await claim_sms(session, now=now, policy=policy)
    # The resend minute is taken here, committed before anything is sent: a second
    # request (a double tap) finds this row and is refused; request_login_code fills it.
    session.add(OneTimeCode(phone=phone, code_hash=CLAIMED, created_at=now, expires_at=now))
    await session.flush()


async def release_code_claim(session: AsyncSession, *, phone: str, now: datetime) -> None:
    """Give the resend minute back when :func:`request_login_code` was refused before or
    by the sender's typed refusal: no code went out, so the resident may ask again at
    once (the day's counts stay: a claim is never given back)."""
    await session.execute(
        delete(OneTimeCode).where(
            OneTimeCode.phone == phone.strip(), OneTimeCode.code_hash == CLAIMED,  # type: ignore[arg-type]
            OneTimeCode.created_at > now - timedelta(seconds=CODE_RESEND_S),  # type: ignore[arg-type]
        )
    )


async def request_login_code(
    session: AsyncSession, *, phone: str, now: datetime, policy: AuthPolicy, sender: SmsSender
) -> datetime:
    """Send a 6-digit code to ``phone``; at most one a minute (the throttles are counted
    and the minute is claimed first by :func:`claim_code_send`). Returns its expiry.

    The code fills the claim's row in the caller's transaction before it is sent. A send
    the vendor or the gateway refused for sure (a typed refusal, an unreachable remote)
    raises and rolls the code back: no code is stored that the resident never received
    (the caller gives the minute back with :func:`release_code_claim`). A send whose
    outcome is unknown (:attr:`GatewayError.maybe_done`: a timeout, a connection lost
    after the request went out) keeps the code: the vendor may have delivered it, and
    throwing it away would make the SMS the resident reads useless (docs/sms.md)."""
    phone = _mobile(phone)
    code = f"{secrets.randbelow(1_000_000):06d}"
    expires_at = now + timedelta(seconds=policy.otp_ttl_s)
    code_hash = code_digest(policy.secret, f"{phone}:{code}")
    filled = await session.execute(
        update(OneTimeCode)
        .where(OneTimeCode.phone == phone, OneTimeCode.code_hash == CLAIMED,  # type: ignore[arg-type]
               OneTimeCode.created_at > now - timedelta(seconds=CODE_RESEND_S))  # type: ignore[arg-type]
        .values(code_hash=code_hash, expires_at=expires_at)
        .returning(OneTimeCode.__table__.c.id)  # type: ignore[attr-defined]
    )
    if filled.first() is None:
        # Not claimed by claim_code_send (a caller that counts nothing): the old check.
        await _refuse_recent_code(session, phone, now)
        session.add(OneTimeCode(phone=phone, code_hash=code_hash, created_at=now, expires_at=expires_at))
        await session.flush()
    try:
        await sender.send_login_code(phone, code)
    except GatewayError as failure:
        if not failure.maybe_done:
            raise
        log.warning("SMS login code for %s: the send's outcome is unknown (%s); the code is kept, as the vendor "
                    "may have delivered it", phone[:3] + "****" + phone[-4:], failure.code)
    return expires_at


async def login_resident(
    session: AsyncSession,
    *,
    phone: str,
    code: str,
    now: datetime,
    policy: AuthPolicy,
    ip: str | None = None,
    user_agent: str | None = None,
) -> TokenPair:
    """Log a resident in with the latest unexpired code; the first login registers them.

    The attempt must have been claimed first with :func:`claim_code_attempt` in its own
    committed transaction: a code allows five attempts, right or wrong, however many
    arrive at once.
    """
    phone = phone.strip()
    pending = (
        await session.execute(
            select(OneTimeCode)
            .where(OneTimeCode.phone == phone, OneTimeCode.consumed_at.is_(None), OneTimeCode.expires_at > now)  # type: ignore[arg-type,union-attr]
            .order_by(OneTimeCode.created_at.desc())  # type: ignore[attr-defined]
            .limit(1)
            .with_for_update()
        )
    ).scalars().first()
    if (
        pending is None
        or pending.attempts > CODE_MAX_ATTEMPTS
        or not secrets.compare_digest(pending.code_hash, code_digest(policy.secret, f"{phone}:{code.strip()}"))
    ):
        raise errors.InvalidCode(field="code")
    pending.consumed_at = now
    resident = (await session.execute(select(Resident).where(Resident.phone == phone))).scalars().first()  # type: ignore[arg-type]
    if resident is None:
        resident = Resident(phone=phone)
        session.add(resident)
    resident.last_login_at = now
    await session.flush()
    assert resident.id is not None
    return await _open_session(
        session, kind=PrincipalKind.resident, principal_id=resident.id, now=now, policy=policy,
        with_refresh=True, ip=ip, user_agent=user_agent,
    )


async def claim_code_attempt(
    session: AsyncSession, *, phone: str, now: datetime, policy: AuthPolicy, ip: str | None,
    over_limit: OverLimitMemo | None = None,
) -> None:
    """Count one attempt against the phone's live code before it is compared; the caller
    commits this on its own. A code with five attempts used is dead: InvalidCode.

    Also counted (and refused past their limits, counting nothing): the address's login
    attempts a minute (:class:`RateLimited`) and the phone's code attempts over the last
    24 hours, right or wrong (:class:`CodeDailyLimit`), so a phone's code cannot be
    ground down by asking for new ones. ``policy`` and ``ip`` are required: a caller
    that left them out would skip those limits, or count every address as one."""
    phone = phone.strip()
    await count_hit(session, key=f"login:ip:{_source(ip)}", now=now, limit=policy.login_attempts_per_ip_per_minute,
                    over_limit=over_limit)
    await count_daily_hit(session, key=code_attempts_key(phone), now=now, limit=policy.code_attempts_per_phone_per_day,
                          refusal=errors.CodeAttemptsDailyLimit(field="code"))
    live = (
        select(OneTimeCode.id)  # type: ignore[call-overload]
        .where(OneTimeCode.phone == phone, OneTimeCode.consumed_at.is_(None), OneTimeCode.expires_at > now)  # type: ignore[union-attr]
        .order_by(OneTimeCode.created_at.desc())  # type: ignore[attr-defined]
        .limit(1)
        .scalar_subquery()
    )
    claimed = await session.execute(
        update(OneTimeCode)
        .where(OneTimeCode.id == live, OneTimeCode.attempts < CODE_MAX_ATTEMPTS)  # type: ignore[arg-type]
        .values(attempts=OneTimeCode.attempts + 1)
        .returning(OneTimeCode.__table__.c.id)  # type: ignore[attr-defined]
    )
    if claimed.first() is None:
        raise errors.InvalidCode(field="code")
