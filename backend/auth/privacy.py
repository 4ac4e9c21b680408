"""What auth holds about a resident, for ``shuiwu privacy export|erase`` (docs/privacy.md).

Found by the phone: the resident account (``residents``), its bindings and binding
requests, its login sessions, the SMS login codes sent to the phone, the throttle
counters keyed by it and the count of failed binding attempts. Hashes of codes and refresh tokens are security material, not
information about the person: the export says they exist, never their value.

Erasure keeps the account row (the operation log and the ``household.bound`` events name
it by id) but replaces its phone with a placeholder, so the number is free and a later
login with it starts a new account. The bindings end (an ``unbound`` row and a
``household.bound`` event each, as when the resident unbinds), pending requests are
refused, the sessions are revoked with their addresses cleared, and the codes and
counters are deleted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.auth.households import HOUSEHOLDS
from backend.auth.models import (
    AuthSession,
    AuthThrottle,
    BindingState,
    HouseholdBinding,
    LoginFailure,
    OneTimeCode,
    PrincipalKind,
    Resident,
    ResidentHousehold,
)
from backend.auth.service.bindings import _emit_bound, bind_attempts_key
from backend.auth.service.residents import code_attempts_key, codes_sent_key
from backend.domain import DataSubject, PersonalSection

# Who decided the bindings an erasure ended (household_bindings.decided_by).
ERASED_BY = "privacy:erase"


def plain(value: Any) -> Any:
    """A column value as JSON: instants and dates in ISO 8601, decimals and ids as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value.value) if hasattr(value, "value") else str(value)


def rows_of(result: Any) -> list[dict[str, Any]]:
    return [{key: plain(value) for key, value in row.items()} for row in result.mappings()]


def throttle_keys(phone: str) -> list[str]:
    """The throttle counters keyed by the phone: codes sent to it, code attempts."""
    return [codes_sent_key(phone), code_attempts_key(phone)]


async def resident_ids(session: AsyncSession, phone: str) -> list[int]:
    """The resident accounts signed in with ``phone`` (one at most: the column is unique)."""
    found = await session.execute(select(col(Resident.id)).where(col(Resident.phone) == phone))
    return [resident_id for resident_id in found.scalars() if resident_id is not None]


async def export(session: AsyncSession, subject: DataSubject) -> list[PersonalSection]:
    phone = subject.phone
    residents = rows_of(await session.execute(
        select(col(Resident.id), col(Resident.phone), col(Resident.created_at), col(Resident.last_login_at))
        .where(col(Resident.phone) == phone)))
    ids = [row["id"] for row in residents]
    bound = rows_of(await session.execute(
        select(col(ResidentHousehold.household_id), HOUSEHOLDS.c.account_no, col(ResidentHousehold.bound_at),
               col(ResidentHousehold.is_owner))
        .join(HOUSEHOLDS, HOUSEHOLDS.c.id == col(ResidentHousehold.household_id))
        .where(col(ResidentHousehold.resident_id).in_(ids)).order_by(col(ResidentHousehold.household_id))))
    requests = rows_of(await session.execute(
        select(col(HouseholdBinding.id), col(HouseholdBinding.household_id), HOUSEHOLDS.c.account_no,
               col(HouseholdBinding.state), col(HouseholdBinding.created_at), col(HouseholdBinding.decided_at),
               col(HouseholdBinding.decided_by), col(HouseholdBinding.code_expires_at),
               col(HouseholdBinding.code_attempts))
        .join(HOUSEHOLDS, HOUSEHOLDS.c.id == col(HouseholdBinding.household_id))
        .where(col(HouseholdBinding.resident_id).in_(ids)).order_by(col(HouseholdBinding.id))))
    sessions = rows_of(await session.execute(
        select(col(AuthSession.id), col(AuthSession.created_at), col(AuthSession.expires_at),
               col(AuthSession.revoked_at), col(AuthSession.ip), col(AuthSession.user_agent))
        .where(col(AuthSession.principal_kind) == PrincipalKind.resident, col(AuthSession.principal_id).in_(ids))
        .order_by(col(AuthSession.created_at))))
    codes = rows_of(await session.execute(
        select(col(OneTimeCode.id), col(OneTimeCode.phone), col(OneTimeCode.created_at), col(OneTimeCode.expires_at),
               col(OneTimeCode.attempts), col(OneTimeCode.consumed_at))
        .where(col(OneTimeCode.phone) == phone).order_by(col(OneTimeCode.created_at))))
    counters = rows_of(await session.execute(
        select(col(AuthThrottle.key), col(AuthThrottle.minute), col(AuthThrottle.hits))
        .where(col(AuthThrottle.key).in_(throttle_keys(phone))).order_by(col(AuthThrottle.minute))))
    failures = rows_of(await session.execute(
        select(col(LoginFailure.username), col(LoginFailure.failures), col(LoginFailure.last_failed_at),
               col(LoginFailure.locked_until))
        .where(col(LoginFailure.username).in_([bind_attempts_key(rid) for rid in ids]))))
    return [
        PersonalSection("residents", "住户账号 (手机号登录)", residents),
        PersonalSection("resident_households", "已绑定的住户", bound),
        PersonalSection("household_bindings", "绑定申请及其记录", requests),
        PersonalSection("auth_sessions", "登录会话", sessions),
        PersonalSection("one_time_codes", "短信验证码 (只存散列, 不含验证码本身)", codes),
        PersonalSection("auth_throttle", "按手机号计数的发送/尝试次数", counters),
        PersonalSection("login_failures", "绑定住户失败次数 (锁定用)", failures),
    ]


async def erase(session: AsyncSession, subject: DataSubject) -> dict[str, int]:
    phone, now = subject.phone, subject.now
    ids = await resident_ids(session, phone)
    counters = await session.execute(delete(AuthThrottle).where(col(AuthThrottle.key).in_(throttle_keys(phone))))
    codes = await session.execute(delete(OneTimeCode).where(col(OneTimeCode.phone) == phone))
    failures = await session.execute(
        delete(LoginFailure).where(col(LoginFailure.username).in_([bind_attempts_key(rid) for rid in ids])))
    changed = {"one_time_codes": changed_rows(codes), "auth_throttle": changed_rows(counters),
               "login_failures": changed_rows(failures)}
    if not ids:
        return changed
    ended = list((await session.execute(
        delete(ResidentHousehold).where(col(ResidentHousehold.resident_id).in_(ids))
        .returning(col(ResidentHousehold.resident_id), col(ResidentHousehold.household_id))
        .execution_options(synchronize_session=False))).all())
    refused = list((await session.execute(
        update(HouseholdBinding)
        .where(col(HouseholdBinding.resident_id).in_(ids), col(HouseholdBinding.state) == BindingState.pending)
        .values(state=BindingState.rejected, decided_at=now, decided_by=ERASED_BY, code_hash=None)
        .returning(col(HouseholdBinding.id)).execution_options(synchronize_session=False))).scalars())
    history = [HouseholdBinding(resident_id=rid, household_id=hid, state=BindingState.unbound, created_at=now,
                                decided_at=now, decided_by=ERASED_BY) for rid, hid in ended]
    session.add_all(history)
    await session.flush()
    for binding in history:
        await _emit_bound(session, binding)
    refused_rows = select(HouseholdBinding).where(col(HouseholdBinding.id).in_(refused))
    for binding in (await session.execute(refused_rows.execution_options(populate_existing=True))).scalars():
        await _emit_bound(session, binding)
    revoked = await session.execute(
        update(AuthSession)
        .where(col(AuthSession.principal_kind) == PrincipalKind.resident, col(AuthSession.principal_id).in_(ids))
        .values(revoked_at=func.coalesce(col(AuthSession.revoked_at), now), ip=None, user_agent=None)
        .execution_options(synchronize_session=False))
    for resident_id in ids:
        await session.execute(update(Resident).where(col(Resident.id) == resident_id)
                              .values(phone=erased_phone(subject, resident_id)).execution_options(synchronize_session=False))
    return changed | {"residents": len(ids), "resident_households": len(ended), "household_bindings": len(refused),
                      "auth_sessions": changed_rows(revoked)}


def erased_phone(subject: DataSubject, resident_id: int) -> str:
    """What an erased account's ``phone`` becomes: unique (the column is) and never a
    number anyone can log in with. The token's first half keeps it within the column's
    20 characters (the id makes it unique)."""
    return f"已注销{subject.token[:8]}#{resident_id}"


def changed_rows(result: Any) -> int:
    """How many rows an UPDATE or DELETE touched."""
    return int(getattr(result, "rowcount", 0) or 0)
