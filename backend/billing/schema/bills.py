"""Bill queries (账单查询): ``bills`` (filtered, paged, counted in one statement),
``bill``, ``Household.bills`` (an extension of the archives' type), the ``node(id:)``
fetcher of ``Bill``, the Excel link ``billsExportUrl`` and the
notices' PDF link ``billNoticesUrl``. Types are thin, built from the rows of
``backend.billing.bill_queries``; a page's lines and allocations load through one
DataLoader batch each. Money is the ``Money`` scalar (fen inside, "53.75" outside);
the late fee and what is owed are read on the utility's day of the request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.billing import bill_queries
from backend.billing.bill_queries import BillLineRow, BillQueryStatus, BillRow, NoticeKind
from backend.billing.bills_models import BillAllocation, BillKind, BillStatus
from backend.billing.http import BILL_NOTICES_PATH, BILLS_EXPORT_PATH, bill_filter_of_params, notice_params
from backend.billing.notices import local_today
from backend.billing.schema.types import (
    AccountsByHouseholdIdLoader,
    AccountType,
    BillingHouseholdByIdLoader,
    HouseholdRef,
    household_type,
)
from backend.billing.scope import area_path_in_scope
from backend.clock import utcnow
from backend.errors import NotFound
from backend.graphql.context import Context
from backend.graphql.extend import TypeExtension
from backend.graphql.loaders import SessionLoader
from backend.graphql.pagination import Connection, PageRequest
from backend.graphql.permissions import Requires
from backend.graphql.relay import Node, decode_id, encode_id
from backend.graphql.scalars import Money

READ = [Requires("bills:read")]

BillStatusEnum = strawberry.enum(BillStatus, name="BillStatus", description="未缴清 / 已缴清 / 已作废")
BillKindEnum = strawberry.enum(BillKind, name="BillKind", description="正常账单 / 销户结算账单")
BillQueryStatusEnum = strawberry.enum(
    BillQueryStatus, name="BillQueryStatus",
    description="The list's status filter: open, paid, voided, or overdue (逾期: open and past its due date, "
    "accruing a late fee; what 催缴 works from).")
BillNoticeKindEnum = strawberry.enum(NoticeKind, name="BillNoticeKind",
                                     description="缴费通知单 (the period's open bills) / 催缴单 (overdue bills)")


# --------------------------------------------------------------------------- loaders


class BillLinesByBillIdLoader(SessionLoader[int, list[BillLineRow]]):
    """A bill's lines (one statement per batch: a page's bills)."""

    missing: list[BillLineRow] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[BillLineRow]]:
        return await bill_queries.lines_by_bill_ids(session, keys)


class BillAllocationsByBillIdLoader(SessionLoader[int, list[BillAllocation]]):
    """A bill's allocations (one statement per batch: a page's bills)."""

    missing: list[BillAllocation] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[BillAllocation]]:
        return await bill_queries.allocations_by_bill_ids(session, keys)


class BillsByHouseholdIdLoader(SessionLoader[tuple[int, BillQueryStatus | None, date], list[BillRow]]):
    """A household's newest bills of a status, keyed (household, status, today): one
    statement per status asked in the request (usually one)."""

    missing: list[BillRow] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[tuple[int, BillQueryStatus | None, date]],
                    ) -> Mapping[tuple[int, BillQueryStatus | None, date], list[BillRow]]:
        found: dict[tuple[int, BillQueryStatus | None, date], list[BillRow]] = {}
        for status, today in {(status, today) for _, status, today in keys}:
            asked = [key for key in keys if key[1:] == (status, today)]
            rows = await bill_queries.bill_rows_by_household_ids(session, [key[0] for key in asked], status=status,
                                                                 today=today)
            found.update({key: rows.get(key[0], []) for key in asked})
        return found


# --------------------------------------------------------------------------- types


@strawberry.type(name="BillReading", description="A meter's reading a bill starts or ends at.")
class BillReadingType:
    meter_id: strawberry.ID
    read_at: datetime
    total_m3: Decimal = strawberry.field(description="累积流量 (m³).")


@strawberry.type(name="BillLine", description="A bill's line per component and tier (tier 0: the minimum charge).")
class BillLineType:
    line_no: int
    component: str = strawberry.field(description="The tariff component's code (water, sewage …).")
    component_name: str = strawberry.field(description="Its name in the tariff version (自来水费).")
    tier: int
    volume_m3: Decimal
    price: Decimal = strawberry.field(description="Yuan per m³, up to 4 places.")
    amount: Money  # type: ignore[valid-type]
    valid_from: date = strawberry.field(description="The tariff version priced from.")
    cycle_start: date = strawberry.field(description=(
        "The tier cycle the line is in: the bill's cycleStart, or an earlier year's when the bill's span crossed an "
        "annual tier cycle's start."))


@strawberry.type(name="BillEarlierCycle", description=(
    "The part of a bill's span in an earlier annual tier cycle than the bill's own (a span crossing 1 January), "
    "priced on its own: its days, months, volume and the cycle's volume used before it."))
class BillEarlierCycleType:
    cycle_start: date
    first_day: date
    last_day: date
    months: int
    volume_m3: Decimal
    prior_m3: Decimal

    @classmethod
    def of(cls, stored: dict[str, str]) -> BillEarlierCycleType:
        return cls(cycle_start=date.fromisoformat(stored["cycle_start"]),
                   first_day=date.fromisoformat(stored["first_day"]), last_day=date.fromisoformat(stored["last_day"]),
                   months=int(stored["months"]), volume_m3=Decimal(stored["volume_m3"]),
                   prior_m3=Decimal(stored["prior_m3"]))


@strawberry.type(name="BillAllocation", description="Part of a credit that paid part of the bill: its late fee "
                 "first, then its principal. A reversed payment's allocation is undone by a negative row (undoesId).")
class BillAllocationType:
    id: strawberry.ID
    entry_id: strawberry.ID | None = strawberry.field(description="The crediting ledger entry (LedgerEntry id).")
    late_fee: Money  # type: ignore[valid-type]
    principal: Money  # type: ignore[valid-type]
    allocated_at: datetime
    undoes_id: strawberry.ID | None

    @classmethod
    def of(cls, allocation: BillAllocation) -> BillAllocationType:
        assert allocation.id is not None
        return cls(id=encode_id("BillAllocation", allocation.id),
                   entry_id=encode_id("LedgerEntry", allocation.entry_id) if allocation.entry_id else None,
                   late_fee=allocation.late_fee_fen, principal=allocation.principal_fen,
                   allocated_at=allocation.allocated_at,
                   undoes_id=encode_id("BillAllocation", allocation.undoes_id) if allocation.undoes_id else None)


def _readings(readings: Sequence[dict[str, Any]]) -> list[BillReadingType]:
    return [BillReadingType(meter_id=encode_id("Meter", r.meter_id), read_at=r.read_at, total_m3=r.total_m3)
            for r in bill_queries.readings_of(readings)]


@strawberry.type(name="Bill", description="A postpaid bill (账单): one account's charge for one period, priced "
                 "from the readings it stores. The late fee and what is owed are read on today's date (the "
                 "utility's zone).")
class BillType(Node):
    account_id: strawberry.ID
    household_id: strawberry.ID
    account_no: str = strawberry.field(description="缴费号 of the household.")
    household_name: str = strawberry.field(description="用户姓名.")
    address: str
    community: str | None
    building: str | None
    unit: str | None
    room_label: str | None = strawberry.field(description="楼-单元-房间, 1-1-0101.")
    period: str = strawberry.field(description="YYYY-MM: the period's first month.")
    months: int = strawberry.field(description=(
        "The calendar months the bill's span touches: 1 monthly, 2 bimonthly, more when earlier months were "
        "never billed (a final bill, an account long unbilled)."))
    kind: BillKindEnum  # type: ignore[valid-type]
    status: BillStatusEnum  # type: ignore[valid-type]
    overdue: bool = strawberry.field(description="Open and past its due date (accruing a late fee).")
    period_start: datetime
    period_end: datetime
    tariff_code: str
    start_readings: list[BillReadingType] = strawberry.field(description="Each meter's start: the previous bill's end.")
    end_readings: list[BillReadingType]
    measured_m3: Decimal = strawberry.field(description="Usage from the account's opening to the period end.")
    volume_m3: Decimal = strawberry.field(description="This bill's volume (m³).")
    cycle_start: date = strawberry.field(description="The tier cycle the volume counts in.")
    cycle_volume_m3: Decimal = strawberry.field(description=(
        "The part of the volume in the cycleStart cycle: all of it unless the span crossed an annual tier cycle's "
        "start (earlierCycles has the rest)."))
    earlier_cycles: list[BillEarlierCycleType] = strawberry.field(description=(
        "The span's parts in earlier annual tier cycles, oldest first; empty when it did not cross a cycle start."))
    prior_cycle_m3: Decimal = strawberry.field(description="What earlier bills of the cycle used (annual tiers).")
    amount: Money = strawberry.field(description="账单金额: the bill's principal.")  # type: ignore[valid-type]
    principal_paid: Money  # type: ignore[valid-type]
    principal_owed: Money  # type: ignore[valid-type]
    due_date: date
    late_fee: Money = strawberry.field(  # type: ignore[valid-type]
        description="滞纳金 today: the whole fee accrued (paid or not; frozen once waived).")
    late_fee_paid: Money  # type: ignore[valid-type]
    late_fee_owed: Money = strawberry.field(description="What is still owed of the late fee today.")  # type: ignore[valid-type]
    late_fee_waived: Money  # type: ignore[valid-type]
    late_fee_waived_at: datetime | None
    amount_owed: Money = strawberry.field(  # type: ignore[valid-type]
        description="欠费: principal owed + late fee owed today; 0 for a paid or voided bill.")
    issued_at: datetime
    issued_by: str
    paid_at: datetime | None
    voided_at: datetime | None
    voided_by: str | None
    void_reason: str | None
    reissue_of_id: strawberry.ID | None = strawberry.field(description="The voided bill this one re-issues.")
    pk: strawberry.Private[int]
    household_pk: strawberry.Private[int]
    account_pk: strawberry.Private[int]

    @classmethod
    def of(cls, row: BillRow, today: date) -> BillType:
        bill = row.bill
        assert bill.id is not None
        owed = bill_queries.bill_owed(bill, today)
        return cls(
            id=encode_id("Bill", bill.id), account_id=encode_id("Account", bill.account_id),
            household_id=encode_id("Household", bill.household_id), account_no=row.account_no,
            household_name=row.household_name, address=row.address, community=row.community, building=row.building,
            unit=row.unit, room_label=row.room_label, period=f"{bill.period:%Y-%m}", months=bill.months,
            kind=bill.kind, status=bill.status,
            overdue=bill.status is BillStatus.open and bill.due_date < today,
            period_start=bill.period_start, period_end=bill.period_end, tariff_code=bill.tariff_code,
            start_readings=_readings(bill.start_readings), end_readings=_readings(bill.end_readings),
            measured_m3=bill.measured_m3, volume_m3=bill.volume_m3, cycle_start=bill.cycle_start,
            cycle_volume_m3=bill.cycle_volume_m3,
            earlier_cycles=[BillEarlierCycleType.of(one) for one in bill.earlier_cycles or ()],
            prior_cycle_m3=bill.prior_cycle_m3, amount=bill.amount_fen, principal_paid=bill.principal_paid_fen,
            principal_owed=owed.principal_owed_fen, due_date=bill.due_date, late_fee=owed.late_fee_fen,
            late_fee_paid=bill.late_fee_paid_fen, late_fee_owed=owed.late_fee_owed_fen,
            late_fee_waived=bill.late_fee_waived_fen, late_fee_waived_at=bill.late_fee_waived_at,
            amount_owed=owed.amount_owed_fen, issued_at=bill.issued_at, issued_by=bill.issued_by,
            paid_at=bill.paid_at, voided_at=bill.voided_at, voided_by=bill.voided_by, void_reason=bill.void_reason,
            reissue_of_id=encode_id("Bill", bill.reissue_of_id) if bill.reissue_of_id else None,
            pk=bill.id, household_pk=bill.household_id, account_pk=bill.account_id,
        )

    @strawberry.field(description="The bill's lines, in order.")
    async def lines(self, info: Info) -> list[BillLineType]:
        rows = await info.context.loader(BillLinesByBillIdLoader).load(self.pk)
        return [BillLineType(line_no=r.line.line_no, component=r.line.component, component_name=r.component_name,
                             tier=r.line.tier, volume_m3=r.line.volume_m3, price=r.line.price,
                             amount=r.line.amount_fen, valid_from=r.line.valid_from,
                             cycle_start=r.line.cycle_start) for r in rows]

    @strawberry.field(description="The payments allocated to it, oldest first (undoing rows included).")
    async def allocations(self, info: Info) -> list[BillAllocationType]:
        found = await info.context.loader(BillAllocationsByBillIdLoader).load(self.pk)
        return [BillAllocationType.of(allocation) for allocation in found]

    @strawberry.field(description="The account billed.")
    async def account(self, info: Info) -> AccountType | None:
        accounts = await info.context.loader(AccountsByHouseholdIdLoader).load(self.household_pk)
        found = [a for a in accounts if a.id == self.account_pk]
        return AccountType.from_row(found[0]) if found else None

    @strawberry.field(description="The household billed.")
    async def household(self, info: Info) -> HouseholdRef | None:
        household = await info.context.loader(BillingHouseholdByIdLoader).load(self.household_pk)
        return household_type(info, household) if household is not None else None


def _today(info: Info) -> date:
    return local_today(utcnow(), info.context.settings.tz)


async def fetch_bill(context: Any, pk: int) -> BillType | None:
    """A bill of a household in the caller's scope (``bills:read``)."""
    principal = context.principal
    if principal is None or not principal.has("bills:read"):
        return None
    async with context.read() as session:
        found = await bill_queries.bill_rows_by_ids(session, [pk], scope_patterns=principal.scope_patterns())
    return BillType.of(found[pk], local_today(utcnow(), context.settings.tz)) if pk in found else None


@strawberry.input(description="Filters of the bills list; each left out filters nothing.")
class BillFilterInput:
    period: str | None = strawberry.field(default=None, description="YYYY-MM")
    status: BillQueryStatusEnum | None = None  # type: ignore[valid-type]
    area_id: strawberry.ID | None = strawberry.field(default=None, description="Households in this area's subtree.")
    search: str | None = strawberry.field(default=None, description="用户姓名 or 缴费号 (account number), in part.")
    account_id: strawberry.ID | None = None

    def to_params(self) -> dict[str, str]:
        """The filter as the export link's query parameters (those that are set)."""
        values = {"period": self.period, "status": self.status, "areaId": self.area_id, "search": self.search,
                  "accountId": self.account_id}
        return {name: str(getattr(value, "value", value)) for name, value in values.items() if value is not None}

    def to_filter(self) -> bill_queries.BillFilter:
        return bill_filter_of_params(self.to_params())


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ, description="账单查询: bills of households in your scope, newest "
                      "period first then by 缴费号, with their lines and allocations.")
    async def bills(self, info: Info, filter: BillFilterInput | None = None, first: int | None = None,
                    after: str | None = None) -> Connection[BillType]:
        page = PageRequest.from_args(first, after)
        bill_filter = filter.to_filter() if filter is not None else bill_queries.BillFilter()
        today = _today(info)
        async with info.context.read() as session:
            found = await bill_queries.bill_page(session, scope_patterns=info.context.caller.scope_patterns(),
                                                 bill_filter=bill_filter, today=today, offset=page.offset,
                                                 limit=page.limit)
        return Connection.from_page([BillType.of(row, today) for row in found.rows], total=found.total,
                                    offset=page.offset)

    @strawberry.field(permission_classes=READ, description="One bill in your scope; others are NOT_FOUND.")
    async def bill(self, info: Info, id: strawberry.ID) -> BillType:
        found = await fetch_bill(info.context, decode_id(id, "Bill"))
        if found is None:
            raise NotFound(field="id")
        return found

    @strawberry.field(permission_classes=READ, description="A relative URL downloading `bills` (the same filter, "
                      "every row, money in yuan) as .xlsx, valid 5 minutes without an Authorization header "
                      "(signed for you and this filter).")
    async def bills_export_url(self, info: Info, filter: BillFilterInput | None = None) -> str:
        context: Context = info.context
        params = filter.to_params() if filter is not None else {}
        bill_filter_of_params(params)  # a bad filter is refused now, not at download
        return context.signed_link(BILLS_EXPORT_PATH, params)

    @strawberry.field(permission_classes=READ, description="A relative URL of the printable PDF of bill notices "
                      "for the area's buildings (a building or a whole community): 缴费通知单 (kind notice: the "
                      "period's open bills, period required) or 催缴单 (kind reminder: bills overdue today, up to "
                      "the period if given). Two notices an A4 page, each building from a new page. Valid 5 "
                      "minutes (signed for you and these arguments).")
    async def bill_notices_url(self, info: Info, area_id: strawberry.ID,
                               kind: BillNoticeKindEnum,  # type: ignore[valid-type]
                               period: str | None = None) -> str:
        context: Context = info.context
        params = {"areaId": str(area_id), "kind": NoticeKind(kind).value}
        if period is not None:
            params["period"] = period
        area, _, _ = notice_params(params)  # refused now, not at download
        async with context.read() as session:
            await area_path_in_scope(session, area, context.caller.scope_patterns())
        return context.signed_link(BILL_NOTICES_PATH, params)


@strawberry.type
class HouseholdBillFields:
    @strawberry.field(permission_classes=READ,
                      description=f"The household's newest bills (at most {bill_queries.MAX_HOUSEHOLD_BILLS}), newest "
                      "period first; `status` filters them (overdue: open and past due). The counter's 缴费 screen.")
    async def bills(self, info: Info, status: BillQueryStatusEnum | None = None,  # type: ignore[valid-type]
                    ) -> list[BillType]:
        household: Any = self  # the archives' Household, already in the caller's reach
        today = _today(info)
        rows = await info.context.loader(BillsByHouseholdIdLoader).load(
            (household.pk, BillQueryStatus(status) if status is not None else None, today))
        return [BillType.of(row, today) for row in rows]


EXTENSIONS = (TypeExtension("Household", HouseholdBillFields),)
NODES = {"Bill": fetch_bill}

__all__ = ["EXTENSIONS", "NODES", "BillType", "Query"]
