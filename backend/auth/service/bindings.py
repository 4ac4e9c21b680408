"""Household bindings (绑定): a resident binds a household by account number and registered
name, proved by their phone, by a code sent to the registered phone, or by an owner's
or the counter's approval; every state change emits ``household.bound``."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.auth import errors
from backend.auth.events import HouseholdBound
from backend.auth.households import HOUSEHOLDS, HouseholdIdentity, household_by_account_no, household_by_id
from backend.auth.models import BindingState, HouseholdBinding, LoginFailure, Resident, ResidentHousehold
from backend.auth.principal import Principal
from backend.auth.ratelimit import OverLimitMemo
from backend.auth.scope import AREA_TREE, in_scope
from backend.auth.security import code_digest
from backend.auth.service.policy import AuthPolicy, SmsSender
from backend.auth.service.residents import CODE_MAX_ATTEMPTS, MOBILE, codes_sent_key
from backend.auth.service.throttles import _claim_against_lockout, _count_sms_send, claim_sms, count_daily_hit
from backend.errors import Forbidden, NotFound
from backend.events.service import emit_event
from backend.gateways.errors import GatewayError

log = logging.getLogger("shuiwu.sms")


def bind_attempts_key(resident_id: int) -> str:
    """The ``login_failures`` name counting a resident's failed binding attempts ("~"
    never appears in a username, so these counters cannot collide with logins)."""
    return f"~bind:{resident_id}"


async def claim_bind_attempt(
    session: AsyncSession, *, resident: Principal, now: datetime, policy: AuthPolicy, ip: str | None,
    over_limit: OverLimitMemo | None = None,
) -> int:
    """Count a binding attempt (commit on its own): five wrong account number / name pairs
    lock binding for the resident (``lockout_s``, doubling like a login lock), so pairs
    cannot be guessed at will. An attempt may send a code to the household's registered
    phone, so it also counts against the address's and everyone's SMS minute limits
    (:class:`RateLimited`), as a login code request does: binding requests cannot pump SMS."""
    await _count_sms_send(session, now=now, policy=policy, ip=ip, over_limit=over_limit)
    # The resident's own counter (no address): their guesses lock only their binding.
    return await _claim_against_lockout(session, name=bind_attempts_key(resident.id), source="", now=now, policy=policy)


def mask_phone(phone: str | None) -> str | None:
    """138****5678: enough for a person to recognise their own number."""
    if not phone:
        return None
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 8 else "****"


@dataclass(frozen=True, slots=True)
class BindingOutcome:
    """Where a binding stands after a call: ``household`` is set once it is active."""

    binding: HouseholdBinding
    account_no: str
    resident_phone: str
    household: HouseholdIdentity | None
    # The masked registered phone a confirmation code was sent to, if one was.
    code_sent_to: str | None = None
    # The code :func:`send_binding_code` sends once the binding has committed.
    unsent_code: BindingCode | None = None


@dataclass(frozen=True, slots=True)
class BindingCode:
    """A household binding's confirmation code, for the registered phone."""

    phone: str
    code: str
    account_no: str


async def send_binding_code(outcome: BindingOutcome, *, sender: SmsSender) -> None:
    """Send the code :func:`bind_household` made, if it made one. Call it after that
    transaction committed: the gateway is slow, and waiting on it inside would hold the
    phone's SMS counter lock (and the binding's row) for every other request meanwhile.
    A send refused for sure raises the sender's typed error: then :func:`withdraw_binding_code`,
    and the pending binding waits for the owner or the counter to approve. A send whose
    outcome is unknown (:attr:`GatewayError.maybe_done`) keeps the code, as a login code's
    does: the owner may have received it (docs/sms.md)."""
    unsent = outcome.unsent_code
    if unsent is None:
        return
    try:
        await sender.send_binding_code(unsent.phone, unsent.code, unsent.account_no)
    except GatewayError as failure:
        if not failure.maybe_done:
            raise
        log.warning("SMS binding code for %s: the send's outcome is unknown (%s); the code is kept, as the vendor "
                    "may have delivered it", mask_phone(unsent.phone), failure.code)


async def withdraw_binding_code(session: AsyncSession, *, outcome: BindingOutcome) -> BindingOutcome:
    """Forget the code :func:`send_binding_code` could not send: it never reached the
    registered phone, so it is not kept as sent (nor reported as sent); the binding stays
    pending for the owner or the counter."""
    unsent = outcome.unsent_code
    if unsent is None:
        return outcome
    await session.execute(
        update(HouseholdBinding)
        .where(HouseholdBinding.id == outcome.binding.id,  # type: ignore[arg-type]
               HouseholdBinding.code_hash.is_not(None))  # type: ignore[union-attr]
        .values(code_hash=None, code_expires_at=None)
    )
    return replace(outcome, code_sent_to=None, unsent_code=None)


async def _emit_bound(session: AsyncSession, binding: HouseholdBinding) -> None:
    """``household.bound`` for every state change, in the caller's transaction."""
    await emit_event(
        session, "household.bound", HouseholdBound(binding.household_id, binding.resident_id, binding.state),
        key=f"household:{binding.household_id}",
    )


async def _activate(session: AsyncSession, binding: HouseholdBinding, *, now: datetime, decided_by: str, owner: bool) -> None:
    binding.state, binding.decided_at, binding.decided_by = BindingState.active, now, decided_by
    binding.code_hash = None
    await session.execute(
        insert(ResidentHousehold)
        .values(resident_id=binding.resident_id, household_id=binding.household_id, bound_at=now, is_owner=owner)
        .on_conflict_do_nothing()
    )
    await session.flush()
    await _emit_bound(session, binding)


def _binding_code_digest(policy: AuthPolicy, binding_id: int, code: str) -> str:
    # Its own message prefix: a binding code is never a login code for the same phone.
    return code_digest(policy.secret, f"bind:{binding_id}:{code.strip()}")


async def bind_household(
    session: AsyncSession,
    *,
    resident: Principal,
    account_no: str,
    name: str,
    now: datetime,
    policy: AuthPolicy,
) -> BindingOutcome:
    """Bind a household by its account number and registered name, with proof beyond
    what the bill prints.

    - The resident's login phone is the household's registered phone (or its second
      phone; the login code proved it): bound at once, as its owner.
    - Otherwise a pending binding is made; a code goes to the registered phone (when it
      is a mobile number and both its daily SMS cap and the installation's allow; the caller sends it with
      :func:`send_binding_code` after committing), and the resident confirms with
      :func:`confirm_household_binding`; or the owner, or the counter, approves it
      (:func:`decide_household_binding`). A repeated request returns the pending one
      without sending another code.

    An unknown account number and a wrong name get the same refusal, so numbers cannot
    be probed; attempts are counted by :func:`claim_bind_attempt` and a match clears the
    count. Every state change emits ``household.bound``.
    """
    if not resident.is_resident:
        raise Forbidden()
    household = await household_by_account_no(session, account_no.strip())
    if household is None or household.name.strip() != name.strip():
        raise errors.HouseholdMismatch(field="accountNo")
    if household.id in resident.household_ids:
        raise errors.AlreadyBound(field="accountNo")
    await session.execute(delete(LoginFailure).where(LoginFailure.username == bind_attempts_key(resident.id)))  # type: ignore[arg-type]
    resident_phone = (await session.execute(select(Resident.phone).where(Resident.id == resident.id))).scalar_one()  # type: ignore[call-overload]
    registered = (household.phone or "").strip()
    # Both numbers on the archive are the current owner's.
    owner_phones = {registered, (household.phone2 or "").strip()} - {""}
    pending = (await session.execute(
        select(HouseholdBinding).where(
            HouseholdBinding.resident_id == resident.id, HouseholdBinding.household_id == household.id,  # type: ignore[arg-type]
            HouseholdBinding.state == BindingState.pending,  # type: ignore[arg-type]
        ).with_for_update()
    )).scalars().first()
    if pending is None:
        pending = HouseholdBinding(resident_id=resident.id, household_id=household.id, state=BindingState.pending, created_at=now)
        session.add(pending)
        await session.flush()
        assert pending.id is not None
        if resident_phone in owner_phones:
            await _activate(session, pending, now=now, decided_by="phone", owner=True)
            return BindingOutcome(pending, household.account_no, resident_phone, household)
        await _emit_bound(session, pending)
        if MOBILE.match(registered):
            try:
                # In one savepoint, in the order claim_code_send takes them (the phone's
                # counter, then the day's claim), so a login code request for the same
                # phone cannot deadlock with this; either refusal rolls back both counts.
                async with session.begin_nested():
                    await count_daily_hit(session, key=codes_sent_key(registered), now=now,
                                          limit=policy.sms_codes_per_phone_per_day, refusal=errors.CodeDailyLimit())
                    await claim_sms(session, now=now, policy=policy)
            except (errors.CodeDailyLimit, errors.SmsDailyCapReached):
                # No code today: the owner or the counter can still approve.
                return BindingOutcome(pending, household.account_no, resident_phone, None)
            code = f"{secrets.randbelow(1_000_000):06d}"
            pending.code_hash = _binding_code_digest(policy, pending.id, code)
            pending.code_expires_at = now + timedelta(seconds=policy.otp_ttl_s)
            await session.flush()
            return BindingOutcome(pending, household.account_no, resident_phone, None, mask_phone(registered),
                                  BindingCode(registered, code, household.account_no))
    code_sent_to = mask_phone(registered) if pending.code_hash is not None else None
    return BindingOutcome(pending, household.account_no, resident_phone, None, code_sent_to)


async def _outcome(session: AsyncSession, binding: HouseholdBinding) -> BindingOutcome:
    household = await household_by_id(session, binding.household_id)
    assert household is not None
    phone = (await session.execute(select(Resident.phone).where(Resident.id == binding.resident_id))).scalar_one()  # type: ignore[call-overload]
    active = binding.state is BindingState.active
    return BindingOutcome(binding, household.account_no, phone, household if active else None)


async def claim_binding_code_attempt(session: AsyncSession, *, resident: Principal, binding_id: int, now: datetime) -> None:
    """Count one attempt at a binding's confirmation code before it is compared (commit
    on its own): five attempts, right or wrong, and the code is dead (InvalidCode)."""
    claimed = await session.execute(
        update(HouseholdBinding)
        .where(
            HouseholdBinding.id == binding_id, HouseholdBinding.resident_id == resident.id,  # type: ignore[arg-type]
            HouseholdBinding.state == BindingState.pending, HouseholdBinding.code_hash.is_not(None),  # type: ignore[arg-type,union-attr]
            HouseholdBinding.code_expires_at > now, HouseholdBinding.code_attempts < CODE_MAX_ATTEMPTS,  # type: ignore[arg-type,operator]
        )
        .values(code_attempts=HouseholdBinding.code_attempts + 1)
        .returning(HouseholdBinding.__table__.c.id)  # type: ignore[attr-defined]
    )
    if claimed.first() is None:
        raise errors.InvalidCode(field="code")


async def confirm_household_binding(
    session: AsyncSession, *, resident: Principal, binding_id: int, code: str, now: datetime, policy: AuthPolicy
) -> BindingOutcome:
    """Activate the resident's pending binding with the code sent to the household's
    registered phone (holding that phone makes them an owner). The attempt must have
    been claimed first with :func:`claim_binding_code_attempt`."""
    binding = (await session.execute(
        select(HouseholdBinding).where(
            HouseholdBinding.id == binding_id, HouseholdBinding.resident_id == resident.id,  # type: ignore[arg-type]
            HouseholdBinding.state == BindingState.pending,  # type: ignore[arg-type]
        ).with_for_update()
    )).scalars().first()
    if (
        binding is None or binding.code_hash is None or binding.code_expires_at is None or binding.code_expires_at <= now
        or binding.code_attempts > CODE_MAX_ATTEMPTS
        or not secrets.compare_digest(binding.code_hash, _binding_code_digest(policy, binding_id, code))
    ):
        raise errors.InvalidCode(field="code")
    await _activate(session, binding, now=now, decided_by="code", owner=True)
    return await _outcome(session, binding)


async def decide_household_binding(
    session: AsyncSession, *, actor: Principal, binding_id: int, approve: bool, now: datetime
) -> BindingOutcome:
    """An owner of the household (a resident bound to it as owner) or staff whose scope
    holds it (the counter) approves or rejects a pending binding. Anyone else, and a
    binding that is not pending, gets NOT_FOUND, so requests do not leak."""
    if actor.is_resident:
        decided_by = f"owner:{actor.id}"
    elif actor.is_staff:
        decided_by = f"staff:{actor.id}"
    else:
        raise Forbidden()
    # Who may decide is part of the query: a binding outside it is never loaded or locked.
    binding = (await session.execute(
        select(HouseholdBinding).where(
            HouseholdBinding.id == binding_id, HouseholdBinding.state == BindingState.pending,  # type: ignore[arg-type]
            col(HouseholdBinding.household_id).in_(_households_deciding_for(actor)),
        ).with_for_update()
    )).scalars().first()
    if binding is None:
        raise NotFound(field="id")
    if approve:
        await _activate(session, binding, now=now, decided_by=decided_by, owner=False)
    else:
        binding.state, binding.decided_at, binding.decided_by, binding.code_hash = BindingState.rejected, now, decided_by, None
        await session.flush()
        await _emit_bound(session, binding)
    return await _outcome(session, binding)


def pending_bindings_statement(actor: Principal) -> Select[tuple[HouseholdBinding, str, str]]:
    """Pending bindings an actor may see, with each household's account number and the
    resident's phone: a resident's own requests and those on households they own; a
    staff member's, on households in their scope."""
    statement = (
        select(HouseholdBinding, HOUSEHOLDS.c.account_no, Resident.phone)  # type: ignore[call-overload]
        .join(HOUSEHOLDS, HOUSEHOLDS.c.id == HouseholdBinding.household_id)
        .join(Resident, Resident.id == HouseholdBinding.resident_id)
        .where(HouseholdBinding.state == BindingState.pending)
    )
    visible: Any = col(HouseholdBinding.household_id).in_(_households_deciding_for(actor))
    if actor.is_resident:
        # A resident also sees their own requests.
        visible = or_(visible, col(HouseholdBinding.resident_id) == actor.id)
    return statement.where(visible).order_by(HouseholdBinding.id)  # type: ignore[no-any-return]


def _households_deciding_for(actor: Principal) -> Select[tuple[int]]:
    """The households whose bindings ``actor`` decides: a resident's owned ones, a staff
    member's in their scope (one predicate, :func:`in_scope`, like every scoped list)."""
    if actor.is_resident:
        return select(ResidentHousehold.household_id).where(  # type: ignore[call-overload,no-any-return]
            ResidentHousehold.resident_id == actor.id, ResidentHousehold.is_owner.is_(True),  # type: ignore[attr-defined]
        )
    return (  # type: ignore[no-any-return]
        select(HOUSEHOLDS.c.id).join(AREA_TREE, AREA_TREE.c.id == HOUSEHOLDS.c.area_id)
        .where(in_scope(AREA_TREE.c.path, actor.scope_patterns()))
    )


async def unbind_household(
    session: AsyncSession, *, resident: Principal, household_id: int, now: datetime
) -> HouseholdIdentity:
    if household_id not in resident.household_ids:
        raise NotFound(field="householdId")
    household = await household_by_id(session, household_id)
    if household is None:
        raise NotFound(field="householdId")
    await session.execute(
        delete(ResidentHousehold).where(
            ResidentHousehold.resident_id == resident.id, ResidentHousehold.household_id == household_id  # type: ignore[arg-type]
        )
    )
    unbound = HouseholdBinding(resident_id=resident.id, household_id=household_id, state=BindingState.unbound,
                               created_at=now, decided_at=now, decided_by=f"resident:{resident.id}")
    session.add(unbound)
    await session.flush()
    await _emit_bound(session, unbound)
    return household
