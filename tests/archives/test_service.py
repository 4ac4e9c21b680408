"""Archive rules at the service layer (rolled-back session)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors, service
from backend.archives.models import (
    Area,
    AreaKind,
    ConnectionKind,
    HouseholdOwner,
    HouseholdStatus,
    Meter,
    MeterAssignment,
    MeterReplacement,
    MeterStatus,
    MeterType,
)
from backend.errors import DomainError, ErrorCode, ValidationFailed
from tests.factories import make_area_tree, make_household, unique

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 6, 1, tzinfo=UTC)


async def make_meter(session: AsyncSession, area: Area, address: str | None = None) -> Meter:
    assert area.id is not None
    address = address or f"{next_address():014d}"
    fields = service.MeterChanges(name="水表", code=unique("M"), address=address, meter_type=MeterType.cold_water, area_id=area.id)
    return await service.create_meter(session, fields=fields)


_addresses = iter(range(10**12, 10**13))


def next_address() -> int:
    return next(_addresses)


async def count(session: AsyncSession, model: type) -> int:
    return (await session.execute(select(func.count()).select_from(model))).scalar_one()  # type: ignore[no-any-return]


async def test_household_with_bad_phone_and_id_number_is_refused_with_both_fields(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    assert tree.east_community.id is not None
    with pytest.raises(ValidationFailed) as refused:
        await service.create_household(session, account_no=unique("88"), name="张伟", area_id=tree.east_community.id,
                                       phone="12345", id_number="abc")
    assert {(e.field, e.code) for e in refused.value.errors} == {("phone", ErrorCode.INVALID_PHONE),
                                                                 ("idNumber", ErrorCode.INVALID_ID_NUMBER)}


async def test_duplicate_account_number_is_refused(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community)
    with pytest.raises(DomainError) as refused:
        await service.create_household(session, account_no=household.account_no, name="李娜", area_id=household.area_id)
    assert (refused.value.code, refused.value.field) == (ErrorCode.DUPLICATE, "accountNo")


async def test_household_outside_the_scope_is_an_unknown_area(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    assert tree.west_community.id is not None
    with pytest.raises(DomainError) as refused:
        await service.create_household(session, account_no=unique("88"), name="张伟", area_id=tree.west_community.id,
                                       scope_patterns=[tree.east.path + "%"])
    assert refused.value.code is ErrorCode.UNKNOWN_AREA


async def test_meter_address_must_be_14_bcd_digits_and_unique(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    for bad in ("1234", "1234567890123A"):
        with pytest.raises(DomainError) as refused:
            await make_meter(session, tree.east_community, address=bad)
        assert (refused.value.code, refused.value.field) == (ErrorCode.INVALID_ADDRESS, "address")
    meter = await make_meter(session, tree.east_community)
    with pytest.raises(DomainError) as refused:
        await make_meter(session, tree.east_community, address=meter.address)
    assert (refused.value.code, refused.value.field) == (ErrorCode.DUPLICATE, "address")


async def test_a_meter_serves_one_household_at_a_time(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    first = await make_household(session, area=tree.east_community)
    second = await make_household(session, area=tree.east_community)
    meter = await make_meter(session, tree.east_community)
    assert meter.id and first.id and second.id
    await service.assign_meter(session, meter_id=meter.id, household_id=first.id, valid_from=T0)
    before = await count(session, MeterAssignment)
    with pytest.raises(DomainError) as refused:
        await service.assign_meter(session, meter_id=meter.id, household_id=second.id, valid_from=T1)
    assert refused.value.code is ErrorCode.METER_ALREADY_ASSIGNED
    assert await count(session, MeterAssignment) == before


async def test_replacement_closes_the_old_assignment_and_opens_the_new_one(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community)
    old = await make_meter(session, tree.east_community)
    new = await make_meter(session, tree.east_community)
    assert old.id and new.id and household.id
    await service.assign_meter(session, meter_id=old.id, household_id=household.id, valid_from=T0, start_reading=Decimal("10"))

    replacement = await service.replace_meter(session, old_meter_id=old.id, new_meter_id=new.id, replaced_at=T1,
                                              old_final_reading=Decimal("123.4560"), new_initial_reading=Decimal("0.5"),
                                              reason="表坏", replaced_by="张工")

    history = (await service.assignments_by_household_ids(session, [household.id]))[household.id]
    assert [(a.meter_id, a.valid_from, a.valid_to, a.start_reading, a.end_reading) for a in history] == [
        (old.id, T0, T1, Decimal("10"), Decimal("123.4560")), (new.id, T1, None, Decimal("0.5"), None)]
    assert replacement.household_id == household.id
    assert (old.status, new.status) == (MeterStatus.retired, MeterStatus.installed)


async def test_replacement_with_a_busy_new_meter_writes_nothing(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    a, b = await make_household(session, area=tree.east_community), await make_household(session, area=tree.east_community)
    old, busy = await make_meter(session, tree.east_community), await make_meter(session, tree.east_community)
    assert old.id and busy.id and a.id and b.id
    old_id, busy_id = old.id, busy.id
    await service.assign_meter(session, meter_id=old_id, household_id=a.id, valid_from=T0)
    await service.assign_meter(session, meter_id=busy_id, household_id=b.id, valid_from=T0)
    with pytest.raises(DomainError) as refused:
        async with session.begin_nested():
            await service.replace_meter(session, old_meter_id=old_id, new_meter_id=busy_id, replaced_at=T1,
                                        old_final_reading=Decimal(5), new_initial_reading=Decimal(0), replaced_by="x")
    assert refused.value.code is ErrorCode.METER_ALREADY_ASSIGNED
    assert await count(session, MeterReplacement) == 0
    assert (await service.assignments_by_meter_ids(session, [old_id]))[old_id][0].valid_to is None


async def handover_readings(session: AsyncSession, meter_id: int) -> list[tuple[datetime, Decimal]]:
    found = await session.execute(text("SELECT read_at, total_m3 FROM readings WHERE meter_id = :m AND quality = 'manual'"
                                       " AND source LIKE 'assignment:%' ORDER BY read_at"), {"m": meter_id})
    return [(row.read_at, row.total_m3) for row in found]


async def test_move_in_and_move_out_store_their_register_readings_and_the_default_only_for_an_unread_meter(
    session: AsyncSession,
) -> None:
    tree = await make_area_tree(session)
    first, second = await make_household(session, area=tree.east_community), await make_household(session, area=tree.east_community)
    meter = await make_meter(session, tree.east_community)
    assert meter.id and first.id and second.id

    await service.assign_meter(session, meter_id=meter.id, household_id=first.id, valid_from=T0)  # initial reading 0
    await service.end_assignment(session, meter_id=meter.id, valid_to=T1, end_reading=Decimal("37.5"))
    # The meter has readings now: its initial reading (0) is not its register, so the
    # defaulted start reading is kept on the assignment only.
    later = datetime(2026, 7, 1, tzinfo=UTC)
    await service.assign_meter(session, meter_id=meter.id, household_id=second.id, valid_from=later)

    assert await handover_readings(session, meter.id) == [(T0, Decimal("0.0000")), (T1, Decimal("37.5000"))]


async def test_a_move_in_before_the_install_day_or_a_move_out_in_the_future_is_refused_and_writes_nothing(
    session: AsyncSession,
) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community)
    assert tree.east_community.id and household.id
    meter = await service.create_meter(session, fields=service.MeterChanges(
        name="水表", code=unique("M"), address=f"{next_address():014d}", meter_type=MeterType.cold_water,
        area_id=tree.east_community.id, install_date=date(2026, 3, 1)))
    meter_id, household_id = meter.id, household.id
    assert meter_id

    with pytest.raises(DomainError) as refused:
        await service.assign_meter(session, meter_id=meter_id, household_id=household_id, valid_from=T0,
                                   start_reading=Decimal(1))
    assert (refused.value.code, refused.value.field) == (ErrorCode.READ_BEFORE_INSTALL, "validFrom")
    assert await service.assignments_by_meter_ids(session, [meter_id]) == {}

    await service.assign_meter(session, meter_id=meter_id, household_id=household_id, valid_from=T1, start_reading=Decimal(1))
    future = datetime(2026, 9, 1, tzinfo=UTC)
    with pytest.raises(DomainError) as refused:
        await service.end_assignment(session, meter_id=meter_id, valid_to=future, end_reading=Decimal(9), now=T1)
    assert (refused.value.code, refused.value.field) == (ErrorCode.READ_AT_IN_FUTURE, "validTo")
    history = (await service.assignments_by_meter_ids(session, [meter_id]))[meter_id]
    assert [(a.valid_from, a.valid_to, a.end_reading) for a in history] == [(T1, None, None)]
    status = (await session.execute(text("SELECT status FROM meters WHERE id = :m"), {"m": meter_id})).scalar_one()
    assert status == MeterStatus.installed.value
    assert await handover_readings(session, meter_id) == [(T1, Decimal("1.0000"))]


async def test_transfer_keeps_the_old_owner_in_history(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, name="张伟")
    assert household.id
    await service.transfer_ownership(session, household_id=household.id, name="李娜", phone="13800000000",
                                     id_number="330102199001011234", valid_from=date(2030, 1, 1))
    owners = (await service.owners_by_household_ids(session, [household.id]))[household.id]
    assert [(o.name, o.valid_to) for o in owners] == [("张伟", date(2030, 1, 1)), ("李娜", None)]
    assert household.name == "李娜"
    assert service.mask_id_number(household.id_number) == "3301**********1234"


async def test_closing_with_a_balance_or_a_meter_is_refused(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community)
    assert household.id

    class Owes(service.HouseholdHooks):
        async def before_close(self, session: AsyncSession, household_id: int, *, now: datetime, by: str) -> None:
            raise errors.BalanceOutstanding(field="status")

    with pytest.raises(DomainError) as refused:
        await service.set_household_status(session, household_id=household.id, status=HouseholdStatus.closed, reason="",
                                           changed_by="x", now=T1, hooks=Owes())
    assert refused.value.code is ErrorCode.BALANCE_OUTSTANDING
    closed = await service.set_household_status(session, household_id=household.id, status=HouseholdStatus.closed,
                                                reason="搬走", changed_by="x", now=T1)
    assert closed.status is HouseholdStatus.closed
    history = (await service.status_history_by_household_ids(session, [household.id]))[household.id]
    assert [(c.status, c.reason) for c in history] == [(HouseholdStatus.closed, "搬走")]


async def test_delete_refused_once_there_is_history(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community)
    meter = await make_meter(session, tree.east_community)
    assert household.id and meter.id
    await service.assign_meter(session, meter_id=meter.id, household_id=household.id, valid_from=T0)
    for attempt in (service.delete_household(session, household_id=household.id),
                    service.delete_meter(session, meter_id=meter.id)):
        with pytest.raises(DomainError) as refused:
            await attempt
        assert refused.value.code is ErrorCode.HAS_HISTORY
    assert tree.east_community.id
    with pytest.raises(DomainError) as refused:
        await service.delete_area(session, area_id=tree.east_community.id)
    assert refused.value.code is ErrorCode.AREA_NOT_EMPTY


async def test_move_rewrites_the_subtree_paths(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    assert tree.east_community.id and tree.west.id
    building = await service.create_area(session, name="1号楼", kind=AreaKind.building, parent_id=tree.east_community.id)
    await service.move_area(session, area_id=tree.east_community.id, new_parent_id=tree.west.id)
    await session.refresh(building)
    assert building.path == f"{tree.west.path}{tree.east_community.id}/{building.id}/"
    with pytest.raises(DomainError) as refused:
        await service.move_area(session, area_id=tree.west.id, new_parent_id=tree.east_community.id)
    assert refused.value.code in (ErrorCode.AREA_MOVE_INVALID, ErrorCode.INVALID)


async def test_terminal_password_is_stored_encrypted(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    assert tree.east.id
    cipher = service.TerminalPasswordCipher("k" * 40)
    fields = service.ConcentratorChanges(name="A座集中器", region_code="3301", terminal_address=17, area_id=tree.east.id,
                                         connection=ConnectionKind.tcp_login, terminal_password="123456")
    concentrator = await service.create_concentrator(session, fields=fields, cipher=cipher)
    assert concentrator.id and concentrator.terminal_password_encrypted and "123456" not in concentrator.terminal_password_encrypted
    assert await service.terminal_password(session, concentrator_id=concentrator.id, cipher=cipher) == "123456"
    with pytest.raises(DomainError) as refused:
        await service.create_concentrator(session, fields=fields, cipher=cipher)
    assert refused.value.code is ErrorCode.DUPLICATE
    assert await count(session, HouseholdOwner) >= 0
