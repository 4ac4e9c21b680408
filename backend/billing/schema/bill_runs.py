"""Billing runs (出账) on the API: ``runBilling``, ``voidBill``, ``setAreaBillingCycle``
and the queries ``billingRuns`` and ``billingCycleOf``; each mutation one transaction with
its audit entry under the ``bills`` menu. Bills are returned by id here (the ``Bill``
type is the bill queries'). The rules live in ``backend.billing.bills``."""

from __future__ import annotations

from datetime import date, datetime

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.billing import bills, review
from backend.billing.bills_models import BillingRun
from backend.clock import utcnow
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest
from backend.graphql.permissions import Requires
from backend.graphql.relay import Node, decode_id, encode_id
from backend.graphql.scalars import Money

READ = [Requires("bills:read")]
RUN = [Requires("bills:run")]
VOID = [Requires("bills:void")]
CONFIGURE = [Requires("bills:configure")]


# A city-wide run issues and holds thousands: its payload lists the first ones of each
# (the counts are the run's); the lists screens page through them all.
LISTED = 200

@strawberry.type(name="HeldAccount", description="An account a run did not bill: its period waits for 抄表审核.")
class HeldAccountType:
    account_id: strawberry.ID
    review_id: strawberry.ID
    alarm_kinds: list[str] = strawberry.field(description="Meter alarm kinds open in the period.")
    missing_reading: bool = strawberry.field(description="A meter had no reading in the period's last 3 days.")

    @classmethod
    def of(cls, held: review.HeldAccount) -> HeldAccountType:
        return cls(account_id=encode_id("Account", held.account_id),
                   review_id=encode_id("ReadingReview", held.review_id), alarm_kinds=list(held.alarm_kinds),
                   missing_reading=held.missing_reading)


@strawberry.type(name="BillingRun", description="One billing run (出账): what it was asked and what it did.")
class BillingRunType(Node):
    period: str = strawberry.field(description="YYYY-MM: the period's first month.")
    area_id: strawberry.ID | None = strawberry.field(description="The subtree billed; null: the whole scope.")
    status: str = strawberry.field(description="running | finished | failed")
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    accounts: int = strawberry.field(description="Open postpaid accounts the run looked at.")
    issued: int = strawberry.field(description="Bills issued.")
    held: int = strawberry.field(description="Accounts held for reading review (not billed).")
    already_billed: int = strawberry.field(description="Accounts with a bill for the period already.")
    skipped: int = strawberry.field(description="Accounts of another cycle, opened after the period or without a tariff "
                                    "in force.")
    amount: Money = strawberry.field(description="The issued bills' total.")  # type: ignore[valid-type]
    error: str | None

    @classmethod
    def of(cls, run: BillingRun) -> BillingRunType:
        assert run.id is not None
        return cls(id=encode_id("BillingRun", run.id), period=f"{run.period:%Y-%m}",
                   area_id=encode_id("Area", run.area_id) if run.area_id is not None else None,
                   status=str(getattr(run.status, "value", run.status)), started_by=run.started_by,
                   started_at=run.started_at, finished_at=run.finished_at, accounts=run.accounts, issued=run.issued,
                   held=run.held, already_billed=run.already_billed, skipped=run.skipped, amount=run.amount_fen,
                   error=run.error)


@strawberry.type(name="AreaBillingCycle", description="抄表周期: how often an area's postpaid accounts are billed.")
class AreaBillingCycleType:
    area_id: strawberry.ID
    months: int = strawberry.field(description="1 (monthly) or 2 (bimonthly).")
    first_month: int = strawberry.field(description="Bimonthly periods start in odd (1) or even (2) months.")
    set_on_area_id: strawberry.ID | None = strawberry.field(
        description="The area whose setting applies (itself or an ancestor); null: none, monthly.")

    @classmethod
    def of(cls, cycle: bills.AreaCycle) -> AreaBillingCycleType:
        return cls(area_id=encode_id("Area", cycle.area_id), months=cycle.months, first_month=cycle.first_month,
                   set_on_area_id=encode_id("Area", cycle.set_on_area_id) if cycle.set_on_area_id is not None else None)


@strawberry.type
class RunBillingPayload:
    run: BillingRunType | None
    bill_ids: list[strawberry.ID] = strawberry.field(
        description=f"The bills this run issued: the first {LISTED} (run.issued counts them all; bills lists every one).")
    held: list[HeldAccountType] = strawberry.field(
        description=f"Accounts held for review, with why: the first {LISTED} in account order (run.held counts "
                    "them all; readingReviews pages through every one).")
    errors: list[UserError]



def run_payload(result: bills.BillingRunResult, run: BillingRun, *, errors: list[UserError]) -> RunBillingPayload:
    """A finished run's payload: its counts, and the first :data:`LISTED` bills and held accounts."""
    return RunBillingPayload(run=BillingRunType.of(run), bill_ids=[encode_id("Bill", i) for i in result.bill_ids[:LISTED]],
                             held=[HeldAccountType.of(h) for h in result.held[:LISTED]], errors=errors)

@strawberry.type
class VoidBillPayload:
    voided_bill_id: strawberry.ID | None
    reissued_bill_id: strawberry.ID | None = strawberry.field(description="The new bill when re-issued.")
    errors: list[UserError]


@strawberry.type
class AreaBillingCyclePayload:
    cycle: AreaBillingCycleType | None
    errors: list[UserError]


def _scope(info: Info) -> list[str]:
    return info.context.caller.scope_patterns()  # type: ignore[no-any-return]


def _by(info: Info) -> str:
    return str(info.context.caller.name)


def _period(period: str) -> date:
    return review.parse_period(period)


def _area(area_id: strawberry.ID | None) -> int | None:
    return decode_id(area_id, "Area", field="areaId") if area_id is not None else None


async def fetch_run(context: object, pk: int) -> BillingRunType | None:
    principal = getattr(context, "principal", None)
    if principal is None or not principal.has("bills:read"):
        return None
    async with context.read() as session:  # type: ignore[attr-defined]
        runs, _ = await bills.billing_runs(session, period=None, run_id=pk, scope_patterns=principal.scope_patterns(),
                                           offset=0, limit=1)
    return BillingRunType.of(runs[0]) if runs else None


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ, description="Billing runs (of a period, YYYY-MM), newest first: runs "
                      "over an area of your scope; runs over the whole utility only when your scope covers it.")
    async def billing_runs(self, info: Info, period: str | None = None, first: int | None = None,
                           after: str | None = None) -> Connection[BillingRunType]:
        page = PageRequest.from_args(first, after)
        async with info.context.read() as session:
            runs, total = await bills.billing_runs(session, period=_period(period) if period is not None else None,
                                                   scope_patterns=_scope(info), offset=page.offset, limit=page.limit)
        return Connection.from_page([BillingRunType.of(run) for run in runs], total=total, offset=page.offset)

    @strawberry.field(permission_classes=READ, description="The billing cycle the area bills in (its own setting or "
                      "its nearest ancestor's; monthly without any).")
    async def billing_cycle_of(self, info: Info, area_id: strawberry.ID) -> AreaBillingCycleType:
        async with info.context.read() as session:
            cycle = await bills.billing_cycle_of(session, area_id=decode_id(area_id, "Area", field="areaId"),
                                                 scope_patterns=_scope(info))
        return AreaBillingCycleType.of(cycle)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=RUN, description="出账: bill the period (YYYY-MM) for the open postpaid "
                         "accounts of the area's subtree (default: your scope) whose cycle starts then; accounts held "
                         "for reading review are reported, accounts billed already counted. Re-running changes "
                         "nothing. BILLING_PERIOD_NOT_ENDED, BILLING_PERIOD_MISALIGNED.")
    async def run_billing(self, info: Info, period: str, area_id: strawberry.ID | None = None) -> RunBillingPayload:
        async def work(session: AsyncSession) -> tuple[bills.BillingRunResult, BillingRun]:
            result = await bills.run_billing(session, period=_period(period), area_id=_area(area_id), now=utcnow(),
                                             by=_by(info), tz=info.context.settings.tz, scope_patterns=_scope(info))
            run = await session.get(BillingRun, result.run_id, populate_existing=True)
            assert run is not None
            return result, run

        def payload(done: tuple[bills.BillingRunResult, BillingRun] | None,
                    errors: list[UserError]) -> RunBillingPayload:
            if done is None:
                return RunBillingPayload(run=None, bill_ids=[], held=[], errors=errors)
            return run_payload(*done, errors=errors)

        def describe(done: tuple[bills.BillingRunResult, BillingRun] | None) -> str:
            if done is None:
                return f"出账 {period}"
            return f"出账 {period}: 出账 {done[0].issued} 户, 待审核 {len(done[0].held)} 户"

        return await run_mutation(info, action="runBilling", describe=describe, payload=payload, work=work)

    @strawberry.mutation(permission_classes=VOID, description="作废账单 with a reason (at most 200 characters); with "
                         "reissue, the account's period is billed again now. BILL_VOIDED, BILL_PAID (reverse the "
                         "payment first), BILL_NOT_LATEST (void the later bill first).")
    async def void_bill(self, info: Info, bill_id: strawberry.ID, reason: str,
                        reissue: bool = False) -> VoidBillPayload:
        async def work(session: AsyncSession) -> bills.VoidedBill:
            return await bills.void_bill(session, bill_id=decode_id(bill_id, "Bill", field="billId"), reason=reason,
                                         by=_by(info), now=utcnow(), reissue=reissue, tz=info.context.settings.tz,
                                         scope_patterns=_scope(info))

        def payload(done: bills.VoidedBill | None, errors: list[UserError]) -> VoidBillPayload:
            if done is None:
                return VoidBillPayload(voided_bill_id=None, reissued_bill_id=None, errors=errors)
            assert done.voided.id is not None
            return VoidBillPayload(
                voided_bill_id=encode_id("Bill", done.voided.id),
                reissued_bill_id=encode_id("Bill", done.reissued_bill_id) if done.reissued_bill_id else None,
                errors=errors)

        def describe(done: bills.VoidedBill | None) -> str:
            action = "作废并重开账单" if reissue else "作废账单"
            return f"{action} {done.voided.period:%Y-%m}" if done is not None else action

        return await run_mutation(info, action="voidBill", describe=describe, payload=payload, work=work)

    @strawberry.mutation(permission_classes=CONFIGURE, description="设置抄表周期: the area and its subtree (down to "
                         "areas with their own setting) bill every 1 or 2 months; bimonthly periods start in odd "
                         "(firstMonth 1) or even (2) months. Bills issued keep their periods.")
    async def set_area_billing_cycle(self, info: Info, area_id: strawberry.ID, months: int,
                                     first_month: int = 1) -> AreaBillingCyclePayload:
        async def work(session: AsyncSession) -> bills.AreaCycle:
            return await bills.set_area_billing_cycle(
                session, area_id=decode_id(area_id, "Area", field="areaId"), months=months, first_month=first_month,
                by=_by(info), now=utcnow(), scope_patterns=_scope(info))

        def payload(cycle: bills.AreaCycle | None, errors: list[UserError]) -> AreaBillingCyclePayload:
            return AreaBillingCyclePayload(cycle=AreaBillingCycleType.of(cycle) if cycle else None, errors=errors)

        return await run_mutation(info, action="setAreaBillingCycle",
                                  describe=lambda _: f"设置抄表周期 {months} 个月", payload=payload, work=work)


NODES = {"BillingRun": fetch_run}

__all__ = ["NODES", "Mutation", "Query"]
