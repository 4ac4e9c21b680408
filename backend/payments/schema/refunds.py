"""GraphQL of refunds through the original channel and reconciliation (原路退款, 对账):
``refundPayment`` (a mistaken payment back through its own channel), the ``OnlineRefund``
rows that ``closeAccount`` also returns, and the ``reconciliationRuns`` report. Thin: the
rules live in ``backend.payments.online.refunds`` and ``reconcile``. A mutation writes its
refunds and audit entry in one transaction; the gateways are asked after that commit
(``send_refunds``), and the payload shows each refund as its gateway left it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Annotated, Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.clock import utcnow
from backend.graphql.errors import UserError
from backend.graphql.loaders import SessionLoader
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest
from backend.graphql.permissions import Requires
from backend.graphql.relay import Node, decode_id, encode_id
from backend.graphql.scalars import Money
from backend.payments.models import PaymentChannel
from backend.payments.online import reconcile, refunds
from backend.payments.online.gateway import StatementKind
from backend.payments.online.models import PaymentRefund, RefundState
from backend.payments.online.reconcile_models import (
    MismatchKind,
    ReconciliationMismatch,
    ReconciliationOutcome,
    ReconciliationRun,
)
from backend.payments.schema.types import PaymentChannelEnum

REFUND = [Requires("counter:refund_online")]
READ = [Requires("payments:read")]

RefundStateEnum = strawberry.enum(RefundState, name="OnlineRefundState", description=(
    "requested (sent or about to be; nothing posted yet) → succeeded (the gateway confirmed: the refund payment and "
    "its ledger entry are written) | failed (the gateway refused: nothing posted, an alarm opened)"))
ReconciliationOutcomeEnum = strawberry.enum(ReconciliationOutcome, name="ReconciliationOutcome", description=(
    "matched | mismatched (see mismatches) | failed (a statement could not be fetched: nothing compared)"))
MismatchKindEnum = strawberry.enum(MismatchKind, name="ReconciliationMismatchKind", description=(
    "missing_ours (on the gateway's statement, not in our books) | missing_theirs (in our books, not on the "
    "statement) | amount_differs"))
StatementKindEnum = strawberry.enum(StatementKind, name="StatementLineKind", description="payment | refund")


@strawberry.type(name="OnlineRefund", description="A refund through the original channel (原路退款): one part of a "
                 "refund, through the payment's own channel and merchant.")
class OnlineRefundType:
    out_refund_no: str = strawberry.field(description="商户退款单号: RF + the day + the id.")
    out_trade_no: str = strawberry.field(description="The order (商户订单号) it gives money back from.")
    channel: PaymentChannelEnum  # type: ignore[valid-type]
    merchant: str = strawberry.field(description="The merchant's name in the merchants file.")
    amount: Money  # type: ignore[valid-type]
    state: RefundStateEnum  # type: ignore[valid-type]
    reason: str
    failure: str | None = strawberry.field(description="The gateway's reason, when it failed.")
    gateway_refund_id: str | None = strawberry.field(description="The gateway's refund id, once it answered.")
    refund_payment_id: strawberry.ID | None = strawberry.field(
        description="The refund payment (kind refund) written when the gateway confirmed.")
    requested_by: str
    requested_at: datetime
    settled_at: datetime | None

    @classmethod
    def of(cls, view: refunds.RefundView) -> OnlineRefundType:
        refund = view.refund
        return cls(out_refund_no=refund.out_refund_no, out_trade_no=view.out_trade_no, channel=view.channel,
                   merchant=view.merchant, amount=refund.amount_fen, state=refund.state, reason=refund.reason,
                   failure=refund.failure, gateway_refund_id=refund.gateway_refund_id,
                   refund_payment_id=encode_id("Payment", refund.refund_payment_id)
                   if refund.refund_payment_id is not None else None,
                   requested_by=refund.requested_by, requested_at=refund.requested_at, settled_at=refund.settled_at)


async def send_after_commit(info: Info, requested: Sequence[PaymentRefund]) -> list[OnlineRefundType]:
    """Send the committed ``requested`` refunds to their gateways at once (the job
    ``query_refunds`` would only take them a minute later) and show them as they stand."""
    context = info.context
    ids = [refund.id for refund in requested if refund.id is not None]
    if not ids:
        return []
    await refunds.send_refunds(context.sessions, context.services, refund_ids=ids, now=utcnow, tz=context.settings.tz)
    async with context.read() as session:
        return [OnlineRefundType.of(view) for view in await refunds.refund_views(session, ids)]


@strawberry.type
class RefundPaymentPayload:
    refunds: list[OnlineRefundType] = strawberry.field(description="The refund (one row) as its gateway left it.")
    errors: list[UserError]


@strawberry.type(name="ReconciliationMismatch", description="One line of either side without its match, or both with "
                 "different amounts.")
class ReconciliationMismatchType:
    kind: MismatchKindEnum  # type: ignore[valid-type]
    line: StatementKindEnum  # type: ignore[valid-type]
    merchant: str
    out_trade_no: str
    out_refund_no: str | None
    trade_no: str | None = strawberry.field(description="The gateway's id of the line.")
    ours: Money | None = strawberry.field(description="Our amount (null: missing on ours).")  # type: ignore[valid-type]
    theirs: Money | None = strawberry.field(  # type: ignore[valid-type]
        description="The statement's amount (null: missing on theirs).")
    detail: str = strawberry.field(description="What our books know of a number missing on our day.")

    @classmethod
    def of(cls, mismatch: ReconciliationMismatch) -> ReconciliationMismatchType:
        return cls(kind=mismatch.kind, line=mismatch.line_kind, merchant=mismatch.merchant,
                   out_trade_no=mismatch.out_trade_no, out_refund_no=mismatch.out_refund_no, trade_no=mismatch.trade_no,
                   ours=mismatch.our_fen, theirs=mismatch.their_fen, detail=mismatch.detail)


class MismatchesByRunIdLoader(SessionLoader[int, list[ReconciliationMismatch]]):
    missing: Any = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[ReconciliationMismatch]]:
        return await reconcile.mismatches_of_runs(session, keys)


@strawberry.type(name="ReconciliationRun", description="对账: one run of a channel's business day against its "
                 "merchants' statements (the CLI's, the daily job's); a day may be run again, the newest run is the "
                 "answer.")
class ReconciliationRunType(Node):
    channel: PaymentChannelEnum  # type: ignore[valid-type]
    day: date
    merchants: list[str]
    outcome: ReconciliationOutcomeEnum  # type: ignore[valid-type]
    our_count: int
    our_net: Money = strawberry.field(description="Our payments minus refunds.")  # type: ignore[valid-type]
    their_count: int
    their_net: Money = strawberry.field(description="The statements' payments minus refunds.")  # type: ignore[valid-type]
    mismatch_count: int
    error: str | None = strawberry.field(description="Why a statement could not be fetched (failed).")
    run_by: str
    started_at: datetime
    finished_at: datetime
    pk: strawberry.Private[int]

    @classmethod
    def from_row(cls, run: ReconciliationRun) -> ReconciliationRunType:
        assert run.id is not None
        return cls(id=encode_id("ReconciliationRun", run.id), channel=run.channel, day=run.day,
                   merchants=[m for m in run.merchants.split(",") if m], outcome=run.outcome, our_count=run.our_count,
                   our_net=run.our_fen, their_count=run.their_count, their_net=run.their_fen,
                   mismatch_count=run.mismatch_count, error=run.error, run_by=run.run_by, started_at=run.started_at,
                   finished_at=run.finished_at, pk=run.id)

    @strawberry.field(description="The run's mismatches, in the order found.")
    async def mismatches(self, info: Info) -> list[ReconciliationMismatchType]:
        found = await info.context.loader(MismatchesByRunIdLoader).load(self.pk)
        return [ReconciliationMismatchType.of(m) for m in found]


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=REFUND, description=(
        "错缴退款: give amount of an online payment (alipay / wechat, from a paid order, at most a year old) back "
        "through its own channel and merchant. The refund is sent at once; it posts (a refund payment and its ledger "
        "entry) only when the gateway confirms: succeeded, requested (WeChat processing, or no answer: the job "
        "query_refunds settles it) or failed (the gateway's reason; an alarm opens). Refused: REFUND_NOT_POSSIBLE "
        "(not an online payment of an order, or too old), REFUND_ABOVE_REFUNDABLE (more than it has left, or than "
        "the balance less refunds in flight), PAYMENT_AMOUNT_INVALID, ACCOUNT_CLOSED."))
    async def refund_payment(self, info: Info, payment_id: strawberry.ID, amount: Money,  # type: ignore[valid-type]
                             reason: str) -> RefundPaymentPayload:
        context = info.context
        kept: list[refunds.OnlineRefundPlan] = []

        async def work(session: AsyncSession) -> refunds.OnlineRefundPlan:
            plan = await refunds.request_payment_refund(
                session, payment_id=decode_id(payment_id, "Payment", field="paymentId"), amount_fen=amount,
                reason=reason, by=context.caller.name, now=utcnow(), tz=context.settings.tz,
                scope_patterns=context.caller.scope_patterns())
            kept.append(plan)
            return plan

        def payload(plan: refunds.OnlineRefundPlan | None, errors: list[UserError]) -> RefundPaymentPayload:
            return RefundPaymentPayload(refunds=[], errors=errors)

        def describe(plan: refunds.OnlineRefundPlan | None) -> str:
            if not plan or not plan.refunds:
                return "原路退款"
            return "原路退款 " + ", ".join(r.out_refund_no for r in plan.refunds)

        done = await run_mutation(info, action="refundPayment", describe=describe, payload=payload, work=work)
        if done.errors or not kept:
            return done
        return RefundPaymentPayload(refunds=await send_after_commit(info, kept[0].refunds), errors=[])


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ, description=(
        "对账 report: the reconciliation runs of a channel (all without) from a day to a day (inclusive, the "
        "utility's days), newest day first, each with its mismatches."))
    async def reconciliation_runs(
        self, info: Info, channel: PaymentChannelEnum | None = None,  # type: ignore[valid-type]
        from_: Annotated[date | None, strawberry.argument(name="from")] = None, to: date | None = None,
        first: int | None = None, after: str | None = None,
    ) -> Connection[ReconciliationRunType]:
        page = PageRequest.from_args(first, after)
        async with info.context.read() as session:
            rows, total = await reconcile.run_page(session, channel=PaymentChannel(channel) if channel else None,
                                                   start=from_, end=to, offset=page.offset, limit=page.limit)
        return Connection.from_page([ReconciliationRunType.from_row(run) for run in rows], total=total,
                                    offset=page.offset)


async def fetch_run(context: Any, pk: int) -> ReconciliationRunType | None:
    principal = context.principal
    if principal is None or not principal.has("payments:read"):
        return None
    async with context.read() as session:
        run = await session.get(ReconciliationRun, pk)
    return ReconciliationRunType.from_row(run) if run is not None else None


NODES = {"ReconciliationRun": fetch_run}
