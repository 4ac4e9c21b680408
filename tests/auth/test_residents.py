"""Residents: SMS login codes, registration on first login, and binding households."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Household
from backend.auth import errors
from backend.auth import service as auth
from backend.auth.catalog import RESIDENT_PERMISSIONS
from backend.auth.models import BindingState, PrincipalKind
from backend.auth.principal import Principal
from backend.auth.service import TokenPair
from backend.errors import DomainError, ErrorCode, Forbidden, NotFound
from tests.auth.support import NOW, POLICY, FakeSms, row_count, row_counts
from tests.factories import make_area_tree, make_household, make_staff

PHONE = "13812345678"


async def send_code(session: AsyncSession, sms: FakeSms, *, phone: str = PHONE, now: datetime = NOW) -> str:
    await auth.request_login_code(session, phone=phone, now=now, policy=POLICY, sender=sms)
    return sms.last_code


async def log_in_resident(session: AsyncSession, *, phone: str = PHONE, now: datetime = NOW) -> TokenPair:
    sms = FakeSms()
    code = await send_code(session, sms, phone=phone, now=now)
    return await auth.login_resident(session, phone=phone, code=code, now=now, policy=POLICY)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def reloaded(session: AsyncSession, resident: Principal) -> Principal:
    principal = await auth.load_principal(session, kind=PrincipalKind.resident, principal_id=resident.id)
    assert principal is not None
    return principal


# --------------------------------------------------------------------------- login codes


async def test_request_login_code_sends_six_digits_and_stores_only_a_hash(session: AsyncSession) -> None:
    sms = FakeSms()

    expires_at = await auth.request_login_code(session, phone=f" {PHONE} ", now=NOW, policy=POLICY, sender=sms)

    assert expires_at == NOW + timedelta(seconds=POLICY.otp_ttl_s)
    assert len(sms.sent) == 1
    phone, code = sms.sent[0]
    assert phone == PHONE
    assert len(code) == 6
    assert code.isdigit()
    assert await row_count(session, "one_time_codes") >= 1


@pytest.mark.parametrize("phone", ["1381234567", "138123456789", "12812345678", "+8613812345678", "138-1234-5678", ""])
async def test_request_login_code_refuses_a_malformed_mobile_number(session: AsyncSession, phone: str) -> None:
    sms = FakeSms()
    before = await row_count(session, "one_time_codes")

    with pytest.raises(DomainError) as refused:
        await auth.request_login_code(session, phone=phone, now=NOW, policy=POLICY, sender=sms)

    assert (refused.value.code, refused.value.field) == (ErrorCode.INVALID, "phone")
    assert sms.sent == []
    assert await row_count(session, "one_time_codes") == before


async def test_a_second_code_within_sixty_seconds_is_refused(session: AsyncSession) -> None:
    sms = FakeSms()
    await send_code(session, sms)

    with pytest.raises(errors.CodeRateLimited) as refused:
        await auth.request_login_code(
            session, phone=PHONE, now=NOW + timedelta(seconds=59), policy=POLICY, sender=sms
        )

    assert refused.value.field == "phone"
    assert len(sms.sent) == 1


async def test_a_code_may_be_requested_again_after_sixty_seconds_and_for_another_phone(session: AsyncSession) -> None:
    sms = FakeSms()
    await send_code(session, sms)

    await send_code(session, sms, phone="13900000000", now=NOW + timedelta(seconds=1))
    await send_code(session, sms, now=NOW + timedelta(seconds=60))

    assert [phone for phone, _ in sms.sent] == [PHONE, "13900000000", PHONE]


async def test_the_right_code_logs_the_resident_in_and_registers_them(session: AsyncSession) -> None:
    sms = FakeSms()
    code = await send_code(session, sms)
    residents_before = await row_count(session, "residents")

    pair = await auth.login_resident(session, phone=PHONE, code=code, now=NOW + timedelta(minutes=1), policy=POLICY)

    assert await row_count(session, "residents") == residents_before + 1
    assert pair.principal.kind is PrincipalKind.resident
    assert pair.principal.name == PHONE
    assert pair.principal.permissions == RESIDENT_PERMISSIONS
    assert pair.principal.household_ids == ()
    assert pair.refresh_token is not None
    authenticated = await auth.authenticate(
        session, token=pair.access_token, now=NOW + timedelta(minutes=2), policy=POLICY
    )
    assert authenticated == pair.principal


async def test_a_code_cannot_be_used_twice(session: AsyncSession) -> None:
    sms = FakeSms()
    code = await send_code(session, sms)
    await auth.login_resident(session, phone=PHONE, code=code, now=NOW, policy=POLICY)

    with pytest.raises(errors.InvalidCode) as refused:
        await auth.login_resident(session, phone=PHONE, code=code, now=NOW + timedelta(seconds=5), policy=POLICY)

    assert refused.value.field == "code"


async def test_a_returning_resident_is_the_same_resident(session: AsyncSession) -> None:
    first = await log_in_resident(session)
    residents_before = await row_count(session, "residents")

    second = await log_in_resident(session, now=NOW + timedelta(minutes=5))

    assert second.principal.id == first.principal.id
    assert await row_count(session, "residents") == residents_before


async def test_a_wrong_code_is_refused_and_opens_no_session(session: AsyncSession) -> None:
    sms = FakeSms()
    code = await send_code(session, sms)
    before = await row_counts(session, "residents", "auth_sessions")

    with pytest.raises(errors.InvalidCode) as refused:
        await auth.login_resident(session, phone=PHONE, code=wrong(code), now=NOW, policy=POLICY)

    assert refused.value.field == "code"
    assert await row_counts(session, "residents", "auth_sessions") == before


async def test_four_wrong_codes_still_leave_the_right_code_usable(session: AsyncSession) -> None:
    sms = FakeSms()
    code = await send_code(session, sms)
    for _ in range(4):
        await auth.claim_code_attempt(session, phone=PHONE, now=NOW, policy=POLICY, ip="203.0.113.9")

    await auth.claim_code_attempt(session, phone=PHONE, now=NOW, policy=POLICY, ip="203.0.113.9")
    pair = await auth.login_resident(session, phone=PHONE, code=code, now=NOW, policy=POLICY)

    assert pair.principal.kind is PrincipalKind.resident


async def test_five_wrong_codes_kill_the_code_even_for_the_right_code(session: AsyncSession) -> None:
    sms = FakeSms()
    code = await send_code(session, sms)
    for _ in range(5):
        await auth.claim_code_attempt(session, phone=PHONE, now=NOW, policy=POLICY, ip="203.0.113.9")
        with pytest.raises(errors.InvalidCode):
            await auth.login_resident(session, phone=PHONE, code=wrong(code), now=NOW, policy=POLICY)

    with pytest.raises(errors.InvalidCode):
        await auth.claim_code_attempt(session, phone=PHONE, now=NOW, policy=POLICY, ip="203.0.113.9")


async def test_an_expired_code_is_refused(session: AsyncSession) -> None:
    sms = FakeSms()
    code = await send_code(session, sms)

    with pytest.raises(errors.InvalidCode):
        await auth.login_resident(
            session, phone=PHONE, code=code, now=NOW + timedelta(seconds=POLICY.otp_ttl_s), policy=POLICY
        )


async def test_only_the_latest_code_works(session: AsyncSession) -> None:
    sms = FakeSms()
    older = await send_code(session, sms)
    newer = await send_code(session, sms, now=NOW + timedelta(seconds=60))
    later = NOW + timedelta(seconds=61)

    if older != newer:  # one in a million they coincide
        with pytest.raises(errors.InvalidCode):
            await auth.login_resident(session, phone=PHONE, code=older, now=later, policy=POLICY)
    pair = await auth.login_resident(session, phone=PHONE, code=newer, now=later, policy=POLICY)
    assert pair.principal.kind is PrincipalKind.resident


async def test_a_code_sent_to_one_phone_does_not_log_in_another(session: AsyncSession) -> None:
    sms = FakeSms()
    code = await send_code(session, sms)
    await send_code(session, sms, phone="13900000000")

    with pytest.raises(errors.InvalidCode):
        await auth.login_resident(session, phone="13900000000", code=code, now=NOW, policy=POLICY)


# --------------------------------------------------------------------------- households


async def bind(session: AsyncSession, resident: Principal, household: Household, *, sms: FakeSms | None = None,
               name: str | None = None, account_no: str | None = None) -> auth.BindingOutcome:
    outcome = await auth.bind_household(
        session, resident=resident, account_no=account_no if account_no is not None else household.account_no,
        name=name if name is not None else household.name, now=NOW, policy=POLICY,
    )
    await auth.send_binding_code(outcome, sender=sms or FakeSms())
    return outcome


async def bound_events(session: AsyncSession, household: Household) -> list[dict[str, object]]:
    rows = await session.execute(
        text("SELECT payload FROM domain_events WHERE kind = 'household.bound' AND key = :key ORDER BY id"),
        {"key": f"household:{household.id}"},
    )
    return list(rows.scalars().all())


async def test_a_resident_whose_phone_is_the_registered_phone_binds_at_once_as_owner(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, name="张伟", phone=PHONE)
    resident = (await log_in_resident(session)).principal
    sms = FakeSms()

    outcome = await bind(session, resident, household, account_no=f" {household.account_no} ", name=" 张伟 ", sms=sms)

    assert outcome.binding.state is BindingState.active
    assert outcome.household is not None and outcome.household.id == household.id
    assert sms.sent == []
    assert (await reloaded(session, resident)).household_ids == (household.id,)
    assert await bound_events(session, household) == [
        {"household_id": household.id, "resident_id": resident.id, "state": "active"},
    ]


async def test_the_households_second_phone_binds_at_once_too(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, phone="13700000009")
    household.phone2 = PHONE
    resident = (await log_in_resident(session)).principal

    outcome = await bind(session, resident, household)

    assert outcome.binding.state is BindingState.active


async def test_what_the_bill_prints_is_not_enough_the_binding_waits_for_the_code_sent_to_the_registered_phone(
    session: AsyncSession,
) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, name="张伟", phone="13700000001")
    resident = (await log_in_resident(session)).principal
    sms = FakeSms()

    pending = await bind(session, resident, household, sms=sms)
    assert pending.binding.id is not None
    repeated = await bind(session, resident, household, sms=sms)

    assert pending.binding.state is BindingState.pending and pending.household is None
    assert pending.code_sent_to == "137****0001"
    assert [phone for phone, _ in sms.sent] == ["13700000001"]
    assert repeated.binding.id == pending.binding.id
    assert (await reloaded(session, resident)).household_ids == ()
    code = sms.last_code
    await auth.claim_binding_code_attempt(session, resident=resident, binding_id=pending.binding.id, now=NOW)
    with pytest.raises(errors.InvalidCode):
        await auth.confirm_household_binding(session, resident=resident, binding_id=pending.binding.id, code=wrong(code),
                                             now=NOW, policy=POLICY)
    # A binding code is no login code for the registered phone.
    with pytest.raises(errors.InvalidCode):
        await auth.login_resident(session, phone="13700000001", code=code, now=NOW, policy=POLICY)

    await auth.claim_binding_code_attempt(session, resident=resident, binding_id=pending.binding.id, now=NOW)
    confirmed = await auth.confirm_household_binding(session, resident=resident, binding_id=pending.binding.id, code=code,
                                                     now=NOW, policy=POLICY)

    assert confirmed.binding.state is BindingState.active
    assert (await reloaded(session, resident)).household_ids == (household.id,)
    assert [event["state"] for event in await bound_events(session, household)] == ["pending", "active"]


async def test_five_code_attempts_kill_a_binding_code(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, phone="13700000002")
    resident = (await log_in_resident(session)).principal
    pending = await bind(session, resident, household)
    assert pending.binding.id is not None

    for _ in range(5):
        await auth.claim_binding_code_attempt(session, resident=resident, binding_id=pending.binding.id, now=NOW)

    with pytest.raises(errors.InvalidCode):
        await auth.claim_binding_code_attempt(session, resident=resident, binding_id=pending.binding.id, now=NOW)


async def test_the_owner_approves_a_tenant_and_nobody_else_may(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, phone=PHONE)
    owner = (await log_in_resident(session)).principal
    await bind(session, owner, household)
    tenant = (await log_in_resident(session, phone="13900000000")).principal
    stranger = (await log_in_resident(session, phone="13900000001")).principal
    pending = await bind(session, tenant, household)
    assert pending.binding.id is not None

    with pytest.raises(NotFound):
        await auth.decide_household_binding(session, actor=stranger, binding_id=pending.binding.id, approve=True, now=NOW)
    with pytest.raises(NotFound):
        await auth.decide_household_binding(session, actor=tenant, binding_id=pending.binding.id, approve=True, now=NOW)
    approved = await auth.decide_household_binding(session, actor=await reloaded(session, owner), binding_id=pending.binding.id,
                                                   approve=True, now=NOW)

    assert approved.binding.state is BindingState.active and approved.binding.decided_by == f"owner:{owner.id}"
    assert (await reloaded(session, tenant)).household_ids == (household.id,)
    assert (await reloaded(session, stranger)).household_ids == ()
    assert [event["state"] for event in await bound_events(session, household)] == ["active", "pending", "active"]


async def test_the_counter_decides_bindings_in_its_scope_only(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community)
    west_desk = await make_staff(session, permissions={"archives:manage"}, areas=[tree.west])
    east_desk = await make_staff(session, permissions={"archives:manage"}, areas=[tree.east])
    resident = (await log_in_resident(session)).principal
    pending = await bind(session, resident, household)
    assert pending.binding.id is not None and pending.code_sent_to is None

    with pytest.raises(NotFound):
        await auth.decide_household_binding(session, actor=west_desk.principal, binding_id=pending.binding.id, approve=True, now=NOW)
    rejected = await auth.decide_household_binding(session, actor=east_desk.principal, binding_id=pending.binding.id,
                                                   approve=False, now=NOW)

    assert rejected.binding.state is BindingState.rejected
    assert (await reloaded(session, resident)).household_ids == ()
    with pytest.raises(NotFound):
        await auth.decide_household_binding(session, actor=east_desk.principal, binding_id=pending.binding.id, approve=True, now=NOW)
    assert [event["state"] for event in await bound_events(session, household)] == ["pending", "rejected"]


async def statements_of(session: AsyncSession, work: Callable[[], Awaitable[object]]) -> list[str]:
    """The SQL ``work`` sends on the session's connection (a refusal is swallowed)."""
    connection = (await session.connection()).sync_connection
    assert connection is not None
    sent: list[str] = []

    def record(conn: object, cursor: object, statement: str, *rest: object) -> None:
        sent.append(statement)

    event.listen(connection, "before_cursor_execute", record)
    try:
        await work()
    except DomainError:
        pass
    finally:
        event.remove(connection, "before_cursor_execute", record)
    return sent


async def test_the_counters_scope_is_part_of_the_query_that_loads_and_locks_a_binding(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community)
    west_desk = await make_staff(session, permissions={"archives:manage"}, areas=[tree.west])
    resident = (await log_in_resident(session)).principal
    pending = await bind(session, resident, household)
    binding_id = pending.binding.id
    assert binding_id is not None

    refused = await statements_of(session, lambda: auth.decide_household_binding(
        session, actor=west_desk.principal, binding_id=binding_id, approve=True, now=NOW))
    listed = str(auth.pending_bindings_statement(west_desk.principal).compile())

    # One statement: the out-of-scope binding is never loaded, let alone locked.
    assert len(refused) == 1
    assert "FOR UPDATE" in refused[0] and "LIKE ANY" in refused[0]
    assert "LIKE ANY" in listed


async def test_a_wrong_name_and_an_unknown_account_get_the_same_refusal(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, name="张伟")
    resident = (await log_in_resident(session)).principal
    before = await row_counts(session, "resident_households", "household_bindings")

    with pytest.raises(errors.HouseholdMismatch) as wrong_name:
        await bind(session, resident, household, name="张三")
    with pytest.raises(errors.HouseholdMismatch) as unknown_account:
        await bind(session, resident, household, account_no="no-such-account")

    assert (wrong_name.value.field, wrong_name.value.message) == (unknown_account.value.field, unknown_account.value.message)
    assert wrong_name.value.field == "accountNo"
    assert await row_counts(session, "resident_households", "household_bindings") == before


async def test_binding_a_household_twice_is_refused(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, phone=PHONE)
    resident = (await log_in_resident(session)).principal
    await bind(session, resident, household)

    with pytest.raises(errors.AlreadyBound) as refused:
        await bind(session, await reloaded(session, resident), household)

    assert refused.value.field == "accountNo"


async def test_staff_cannot_bind_a_household(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community)
    staff = await make_staff(session)

    with pytest.raises(Forbidden):
        await bind(session, staff.principal, household)


async def test_unbinding_ones_household_removes_it(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, phone=PHONE)
    resident = (await log_in_resident(session)).principal
    await bind(session, resident, household)

    await auth.unbind_household(session, resident=await reloaded(session, resident), household_id=household.id or 0, now=NOW)

    assert (await reloaded(session, resident)).household_ids == ()
    assert [event["state"] for event in await bound_events(session, household)] == ["active", "unbound"]


async def test_unbinding_a_household_that_is_not_yours_is_not_found(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, phone=PHONE)
    owner = (await log_in_resident(session)).principal
    await bind(session, owner, household)
    stranger = (await log_in_resident(session, phone="13900000000")).principal
    before = await row_count(session, "resident_households")

    with pytest.raises(NotFound) as refused:
        await auth.unbind_household(session, resident=stranger, household_id=household.id or 0, now=NOW)

    assert refused.value.field == "householdId"
    assert await row_count(session, "resident_households") == before
    assert (await reloaded(session, owner)).household_ids == (household.id,)


async def test_five_binding_attempts_lock_binding_for_the_resident(session: AsyncSession) -> None:
    sms = FakeSms()
    code = await send_code(session, sms)
    await auth.claim_code_attempt(session, phone=PHONE, now=NOW, policy=POLICY, ip="203.0.113.9")
    resident = (await auth.login_resident(session, phone=PHONE, code=code, now=NOW, policy=POLICY)).principal

    # From one address per attempt, under its SMS minute limit: the lock is the resident's.
    for n in range(5):
        await auth.claim_bind_attempt(session, resident=resident, now=NOW, policy=POLICY, ip=f"203.0.113.{n}")

    with pytest.raises(errors.AccountLocked):
        await auth.claim_bind_attempt(session, resident=resident, now=NOW, policy=POLICY, ip="203.0.113.9")
