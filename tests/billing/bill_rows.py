"""Bills written as rows, for the tests of what reads them (queries, exports, notices):
a bill with its lines and its ``bill`` ledger debit, and a payment allocated to it, as
the billing run and settlement would leave them, without running either."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.archives.models import Area, AreaKind, Household, Meter
from backend.archives.service import assign_meter, create_area, create_household
from backend.billing import service as tariffs
from backend.billing.accounts import AccountTerms, open_account
from backend.billing.bills_models import Bill, BillAllocation, BillLine, BillStatus
from backend.billing.late_fees import LateFeeState, carry_to
from backend.billing.ledger import post_entry
from backend.billing.models import BillingMode, EntryKind
from backend.billing.notices import local_today
from backend.billing.review import period_bounds
from backend.clock import utcnow
from tests.billing.factories import SHANGHAI, at, tariff
from tests.factories import AreaTree, Staff, make_area_tree, make_staff, unique
from tests.graphql.client import GraphQLClient, graphql_client
from tests.readings.factories import make_meter


async def make_bill(
    session: AsyncSession,
    *,
    account_id: int,
    household_id: int,
    period: date,
    meter_id: int,
    start_m3: str,
    end_m3: str,
    lines: list[tuple[str, int, str, str]],
    due_date: date | None = None,
    issued_at: datetime | None = None,
    tariff_code: str = "T-RES",
    late_fee_rate: str = "0.0005",
) -> Bill:
    """A live open bill of ``period`` priced at ``lines`` (component, tier, volume m³,
    price yuan/m³; each line's amount rounded half up), read from ``start_m3`` to
    ``end_m3`` on ``meter_id``, due on the 15th of the next month by default, debited
    from the account's ledger (kind ``bill``, ref ``bill:<id>``)."""
    start, end = period_bounds(period, SHANGHAI)
    priced = [(component, tier, Decimal(volume), Decimal(price),
               int((Decimal(volume) * Decimal(price) * 100).quantize(Decimal(1), rounding="ROUND_HALF_UP")))
              for component, tier, volume, price in lines]
    amount = sum(line[4] for line in priced)
    volume = Decimal(end_m3) - Decimal(start_m3)
    issued = issued_at or end + timedelta(days=1)
    bill = Bill(
        account_id=account_id, household_id=household_id, period=period, months=1, period_start=start, period_end=end,
        tariff_code=tariff_code, start_readings=[_reading(meter_id, start, start_m3)],
        end_readings=[_reading(meter_id, end - timedelta(hours=1), end_m3)], measured_m3=volume, volume_m3=volume,
        cycle_start=period, cycle_volume_m3=volume, amount_fen=amount, due_date=due_date or (end.date() + timedelta(days=14)),
        late_fee_rate=Decimal(late_fee_rate), late_fee_cap_fen=amount, issued_at=issued, issued_by="测试",
    )
    session.add(bill)
    await session.flush()
    assert bill.id is not None
    session.add_all([BillLine(bill_id=bill.id, line_no=number, component=component, tier=tier, volume_m3=volume,
                              price=price, amount_fen=line_amount, valid_from=date(2024, 1, 1),
                              cycle_start=period)
                     for number, (component, tier, volume, price, line_amount) in enumerate(priced, start=1)])
    entry = await post_entry(session, account_id=account_id, kind=EntryKind.bill, amount_fen=-amount,
                             ref=f"bill:{bill.id}", idempotency_key=unique("bill"), posted_at=issued)
    bill.entry_id = entry.id
    await session.flush()
    return bill


def _reading(meter_id: int, read_at: datetime, total_m3: str) -> dict[str, Any]:
    return {"meter_id": meter_id, "read_at": read_at.isoformat(), "total_m3": total_m3}


async def pay_bill(session: AsyncSession, bill: Bill, *, principal_fen: int, late_fee_fen: int = 0,
                   at: datetime) -> BillAllocation:
    """A payment credited to the account and allocated to ``bill``: its late fee, then
    principal; the bill is paid when both are covered (the fee posted as it is paid)."""
    assert bill.id is not None
    amount = principal_fen + late_fee_fen
    # The fee accrued so far is carried before the owed principal changes (late_fees.carry_to).
    bill.late_fee_carried, bill.late_fee_from = carry_to(LateFeeState.of(bill), at.astimezone(SHANGHAI).date())
    if late_fee_fen:
        await post_entry(session, account_id=bill.account_id, kind=EntryKind.late_fee, amount_fen=-late_fee_fen,
                         ref=f"bill:{bill.id}", idempotency_key=unique("fee"), posted_at=at)
    payment = await post_entry(session, account_id=bill.account_id, kind=EntryKind.payment, amount_fen=amount,
                               ref=unique("payment:"), idempotency_key=unique("pay"), posted_at=at)
    allocation = BillAllocation(bill_id=bill.id, account_id=bill.account_id, entry_id=payment.id,
                                late_fee_fen=late_fee_fen, principal_fen=principal_fen, allocated_at=at)
    session.add(allocation)
    bill.principal_paid_fen += principal_fen
    bill.late_fee_posted_fen += late_fee_fen
    bill.late_fee_paid_fen += late_fee_fen
    if bill.principal_paid_fen == bill.amount_fen:
        bill.status = BillStatus.paid
        bill.paid_at = at
    await session.flush()
    return allocation


async def void_bill(session: AsyncSession, bill: Bill, *, at: datetime, reason: str = "读数错误") -> None:
    """``bill`` voided and reversed by a credit entry (kind reversal)."""
    reversal = await post_entry(session, account_id=bill.account_id, kind=EntryKind.reversal,
                                amount_fen=bill.amount_fen, ref=f"bill:{bill.id}", idempotency_key=unique("void"),
                                posted_at=at)
    bill.status = BillStatus.voided
    bill.voided_at, bill.voided_by, bill.void_reason, bill.void_entry_id = at, "测试", reason, reversal.id
    await session.flush()


# --------------------------------------------------------------------------- a town with bills

# Water in two tiers (10 m³ a month at ¥3.00, then ¥4.50) and a flat sewage charge (¥1.00).
WATER_SEWAGE = [{"code": "water", "name": "自来水费", "prices": ["3.00", "4.50"]},
                {"code": "sewage", "name": "污水处理费", "prices": ["1.00", "1.00"]}]


def months_before(day: date, months: int) -> date:
    """The first day of the month ``months`` before ``day``'s month."""
    index = day.year * 12 + day.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


@dataclass
class BillTown:
    """Postpaid households with bills, around ``today`` (the utility's day of the run):
    ``period`` is last month, ``earlier`` the month before.

    - 王芳 (翠湖小区 1号楼 1单元 0101): ``earlier`` paid (¥32.00); ``period`` ¥53.75 open,
      due 10 days ago (late fee 27 fen today: 5375 × 0.0005 × 10 = 26.875).
    - 张伟 (1号楼 1单元 0102): ``period`` ¥20.00, ¥5.00 paid, due in 5 days.
    - 李强 (2号楼 0201): ``period`` ¥40.00 voided and re-issued at ¥36.00, due 3 days ago
      (late fee 5 fen: 3600 × 0.0005 × 3 = 5.4).
    - 李娜 (西山名苑, the west): ``period`` ¥24.00, due 20 days ago (late fee 24 fen).
    """

    today: date
    period: date
    earlier: date
    tree: AreaTree
    building1: Area
    building2: Area
    reader: Staff  # bills:read (and archives:read) over the east
    outsider: Staff  # accounts:read only, over the east
    households: dict[str, Household]
    meters: dict[str, Meter]
    bills: dict[str, Bill]  # wang_earlier, wang, zhang, li_voided, li, na


async def make_bill_town(session: AsyncSession, today: date) -> BillTown:
    period, earlier = months_before(today, 1), months_before(today, 2)
    tree = await make_area_tree(session)
    building1 = await create_area(session, name="1号楼", kind=AreaKind.building, parent_id=tree.east_community.id)
    unit1 = await create_area(session, name="1单元", kind=AreaKind.unit, parent_id=building1.id)
    building2 = await create_area(session, name="2号楼", kind=AreaKind.building, parent_id=tree.east_community.id)
    raw = tariff(limits=["10"], components=WATER_SEWAGE)
    await tariffs.save_tariff(session, raw=raw)
    prefix = unique("B")
    opened = at(earlier.year, earlier.month, 1) - timedelta(days=1)
    households: dict[str, Household] = {}
    meters: dict[str, Meter] = {}
    accounts: dict[str, int] = {}
    for key, name, area, room in (("wang", "王芳", unit1, "0101"), ("zhang", "张伟", unit1, "0102"),
                                  ("li", "李强", building2, "0201"), ("na", "李娜", tree.west_community, None)):
        assert area.id is not None
        household = await create_household(session, account_no=f"{prefix}{len(households) + 1:02d}", name=name,
                                           area_id=area.id, room=room)
        meter = await make_meter(session, area_id=area.id, install_date=None)
        assert household.id is not None and meter.id is not None
        await assign_meter(session, meter_id=meter.id, household_id=household.id, valid_from=opened,
                           start_reading=Decimal(0))
        account = await open_account(session, household_id=household.id, mode=BillingMode.postpaid,
                                     terms=AccountTerms(tariff_code=raw["code"]), now=opened, by="测试")
        assert account.id is not None
        households[key], meters[key], accounts[key] = household, meter, account.id

    async def bill(key: str, month: date, start: str, end: str, lines: list[tuple[str, int, str, str]],
                   due: date) -> Bill:
        household_id, meter_id = households[key].id, meters[key].id
        assert household_id is not None and meter_id is not None
        return await make_bill(session, account_id=accounts[key], household_id=household_id, period=month,
                               meter_id=meter_id, start_m3=start, end_m3=end, lines=lines, due_date=due,
                               tariff_code=raw["code"])

    bills: dict[str, Bill] = {}
    bills["wang_earlier"] = await bill("wang", earlier, "0", "8", [("water", 1, "8", "3.00"), ("sewage", 1, "8", "1.00")],
                                       today - timedelta(days=40))
    due = bills["wang_earlier"].due_date
    await pay_bill(session, bills["wang_earlier"], principal_fen=3200, at=at(due.year, due.month, due.day, 10))
    bills["wang"] = await bill("wang", period, "8", "20.5", [("water", 1, "10", "3.00"), ("water", 2, "2.5", "4.50"),
                                                           ("sewage", 1, "12.5", "1.00")], today - timedelta(days=10))
    bills["zhang"] = await bill("zhang", period, "0", "5", [("water", 1, "5", "3.00"), ("sewage", 1, "5", "1.00")],
                                today + timedelta(days=5))
    await pay_bill(session, bills["zhang"], principal_fen=500, at=at(today.year, today.month, today.day) - timedelta(days=1))
    bills["li_voided"] = await bill("li", period, "0", "10", [("water", 1, "10", "3.00"), ("sewage", 1, "10", "1.00")],
                                    today - timedelta(days=3))
    await void_bill(session, bills["li_voided"], at=at(today.year, today.month, today.day))
    bills["li"] = await bill("li", period, "0", "9", [("water", 1, "9", "3.00"), ("sewage", 1, "9", "1.00")],
                             today - timedelta(days=3))
    bills["li"].reissue_of_id = bills["li_voided"].id
    bills["na"] = await bill("na", period, "0", "6", [("water", 1, "6", "3.00"), ("sewage", 1, "6", "1.00")],
                             today - timedelta(days=20))
    await session.flush()
    reader = await make_staff(session, permissions={"bills:read", "archives:read"}, areas=[tree.east])
    outsider = await make_staff(session, permissions={"accounts:read"}, areas=[tree.east])
    return BillTown(today, period, earlier, tree, building1, building2, reader, outsider, households, meters, bills)


# --------------------------------------------------------------------------- fixtures of the bills' API tests
# Imported by the modules that use them (each module gets its own town, client and logins).


@pytest.fixture(scope="module")
async def town(committed_sessions: async_sessionmaker[AsyncSession]) -> BillTown:
    async with committed_sessions() as session, session.begin():
        return await make_bill_town(session, local_today(utcnow(), SHANGHAI))


@pytest.fixture(scope="module")
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


@pytest.fixture(scope="module")
async def tokens(client: GraphQLClient, town: BillTown) -> dict[str, str]:
    """An access token of each staff member, logged in once (a login hashes a password)."""
    return {"reader": await client.login(town.reader.username, town.reader.password),
            "outsider": await client.login(town.outsider.username, town.outsider.password)}
