"""Counter mutations (柜台收费): 收费, 冲正, 销户 and 日结, each one transaction with its
audit entry under the declared operation (``backend.payments.domain``), refusals as
payload errors. The rules live in ``backend.payments.counter``, ``closing`` and ``days``."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.billing.models import Account
from backend.clock import utcnow
from backend.domain import settings_group_key
from backend.errors import BadUserInput, Forbidden, NotFound
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id
from backend.graphql.scalars import Money
from backend.payments import counter, days
from backend.payments.closing import close_account_at_desk
from backend.payments.counter import DEFAULT_MAX_COUNTER_PAYMENT_FEN, ClosedAccount, Operator
from backend.payments.days import CashierDayFigures
from backend.payments.models import Payment, PaymentChannel, PaymentPurpose
from backend.payments.schema.queries import DAY_ALL
from backend.payments.schema.refunds import OnlineRefundType, send_after_commit
from backend.payments.schema.types import (
    AccountRef,
    CashierDayType,
    PaymentChannelEnum,
    PaymentPurposeEnum,
    PaymentType,
    account_type,
)

COLLECT = [Requires("counter:collect")]
CLOSE = [Requires("counter:close_account")]


@strawberry.type
class TakePaymentPayload:
    payment: PaymentType | None
    account: AccountRef | None = strawberry.field(description="The account with its balance after the payment.")
    errors: list[UserError]


@strawberry.type
class PaymentPayload:
    payment: PaymentType | None
    errors: list[UserError]


@strawberry.type
class CloseAccountPayload:
    account: AccountRef | None = strawberry.field(description="The closed account (balance zero), or still open while "
                                                  "its onlineRefunds settle.")
    final_charge: Money | None = strawberry.field(  # type: ignore[valid-type]
        description="What the final charge debited (net), up to the final reading.")
    refund: PaymentType | None = strawberry.field(description="The balance given back in cash, if it was positive and "
                                                  "none of it could go back online.")
    collection: PaymentType | None = strawberry.field(description="The arrears taken, if the balance was negative.")
    online_refunds: list[OnlineRefundType] = strawberry.field(description=(
        "原路退款: the part of a positive balance that went back through the original online channels (newest "
        "payment first), sent at once. While any is not settled the account stays open, balance unchanged until "
        "each gateway confirms (the job query_refunds follows them); close again once they are settled: the rest "
        "(and any failed refund) is paid in cash and the account closes."))
    errors: list[UserError]


@strawberry.type
class HandOverDayPayload:
    cashier_day: CashierDayType | None
    errors: list[UserError]


@strawberry.input(description="收费: 金额 and 确认金额 must match; card and transfer need their reference, bank its "
                  "partner.")
class TakePaymentInput:
    account_id: strawberry.ID
    channel: PaymentChannelEnum  # type: ignore[valid-type]
    purpose: PaymentPurposeEnum  # type: ignore[valid-type]
    amount: Money  # type: ignore[valid-type]
    confirm_amount: Money = strawberry.field(description="确认金额: typed again.")  # type: ignore[valid-type]
    idempotency_key: str = strawberry.field(description="The client's key for this payment (1 to 100 characters): "
                                            "a repeat returns the first payment, so a double click charges once.")
    reference: str | None = strawberry.field(default=None,
                                             description="POS 参考号 (card) or transfer serial (transfer): required.")
    bank_partner: str | None = strawberry.field(default=None, description="合作银行: required for bank.")
    bank_outlet: str | None = None
    note: str | None = strawberry.field(default=None, description="备注, at most 200 characters.")
    bill_ids: list[strawberry.ID] | None = strawberry.field(
        default=None, description="Bills to pay first (at most 60; oldest of them first, each late fee before its "
        "principal), then the account's other open bills oldest first; a postpaid account's payment pays its bills "
        "either way. Another account's bill: NOT_FOUND; a voided one: BILL_VOIDED.")


@strawberry.input(description="销户: final charge, refund or collection, close. See the mutation for the final reading.")
class CloseAccountInput:
    account_id: strawberry.ID
    idempotency_key: str = strawberry.field(description="The client's key: the refund or collection is keyed by it.")
    final_reading: Decimal | None = strawberry.field(
        default=None, description="The meter's register total (m³) read at the desk; stored first as a manual "
        "reading on the household's one current meter.")
    final_reading_at: datetime | None = strawberry.field(
        default=None, description="When finalReading was read (default now); only with finalReading.")
    collect_channel: PaymentChannelEnum | None = strawberry.field(  # type: ignore[valid-type]
        default=None, description="How arrears are paid (default cash).")
    collect_reference: str | None = strawberry.field(default=None, description="Its reference (card, transfer).")
    collect_bank_partner: str | None = strawberry.field(default=None, description="The bank (required for bank).")
    collect_bank_outlet: str | None = strawberry.field(default=None, description="The bank's outlet.")


def _operator(info: Info) -> Operator:
    """The cashier: a staff caller (its id locks its own day), with ``counter:reverse_any``."""
    caller: Principal = info.context.caller
    staff_id = caller.id if caller.kind is PrincipalKind.staff else None
    return Operator(staff_id, caller.name, may_reverse_any=caller.has("counter:reverse_any"))


def _max_fen(info: Info) -> int:
    """The largest single counter payment: the ``settings.payments`` service's."""
    found = info.context.services.get(settings_group_key("payments"))
    return int(found.max_counter_payment_fen) if found is not None else DEFAULT_MAX_COUNTER_PAYMENT_FEN


def _scope(info: Info) -> list[str]:
    return info.context.caller.scope_patterns()  # type: ignore[no-any-return]


def _payment(payment: Payment | None) -> PaymentType | None:
    return PaymentType.from_row(payment) if payment is not None else None


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=COLLECT, description="收费 (充值 / 缴费) at the counter: the payment, its "
                         "ledger entry and payment.succeeded in one go. Refused: PAYMENT_AMOUNT_INVALID (≤ 0), "
                         "PAYMENT_AMOUNT_MISMATCH (金额 ≠ 确认金额), PAYMENT_ABOVE_MAXIMUM (SHUIWU_PAYMENTS_MAX_COUNTER_"
                         "PAYMENT_FEN), PAYMENT_REFERENCE_REQUIRED, ACCOUNT_CLOSED, CASHIER_DAY_LOCKED, "
                         "IDEMPOTENCY_CONFLICT (the key used for a different payment); with billIds, NOT_FOUND "
                         "(another account's bill) and BILL_VOIDED. On a postpaid account the money pays its open "
                         "bills, oldest first, each late fee before its principal.")
    async def take_payment(self, info: Info, input: TakePaymentInput) -> TakePaymentPayload:
        async def work(session: AsyncSession) -> tuple[Payment, Account | None]:
            payment = await counter.take_payment(
                session, account_id=decode_id(input.account_id, "Account", field="accountId"),
                channel=PaymentChannel(input.channel), purpose=PaymentPurpose(input.purpose), amount_fen=input.amount,
                confirm_amount_fen=input.confirm_amount, idempotency_key=input.idempotency_key,
                operator=_operator(info), now=utcnow(), tz=info.context.settings.tz, reference=input.reference,
                bank_partner=input.bank_partner, bank_outlet=input.bank_outlet, note=input.note or "",
                max_fen=_max_fen(info), scope_patterns=_scope(info),
                bill_ids=[decode_id(bill, "Bill", field="billIds") for bill in input.bill_ids or ()])
            return payment, await session.get(Account, payment.account_id, populate_existing=True)

        def payload(done: tuple[Payment, Account | None] | None, errors: list[UserError]) -> TakePaymentPayload:
            account = done[1] if done else None
            return TakePaymentPayload(payment=_payment(done[0]) if done else None,
                                      account=account_type(info, account) if account is not None else None,
                                      errors=errors)

        def describe(done: tuple[Payment, Account | None] | None) -> str:
            return f"收费 {done[0].serial_no}" if done else "收费"

        return await run_mutation(info, action="takePayment", describe=describe, payload=payload, work=work)

    @strawberry.mutation(permission_classes=COLLECT, description="冲正: post the opposite entry and mark the payment "
                         "reversed. Your own payment of today; anyone's or an earlier day's needs counter:reverse_any "
                         "(REVERSAL_NOT_ALLOWED). Twice: PAYMENT_ALREADY_REVERSED; a handed-over day: "
                         "CASHIER_DAY_LOCKED.")
    async def reverse_payment(self, info: Info, id: strawberry.ID, reason: str) -> PaymentPayload:
        async def work(session: AsyncSession) -> Payment:
            return await counter.reverse_payment(session, payment_id=decode_id(id, "Payment"), reason=reason,
                                                 operator=_operator(info), now=utcnow(), tz=info.context.settings.tz,
                                                 scope_patterns=_scope(info))

        def payload(payment: Payment | None, errors: list[UserError]) -> PaymentPayload:
            return PaymentPayload(payment=_payment(payment), errors=errors)

        return await run_mutation(info, action="reversePayment",
                                  describe=lambda p: f"冲正 {p.serial_no}" if p else "冲正", payload=payload, work=work)

    @strawberry.mutation(permission_classes=CLOSE, description="销户: charge the usage up to the final reading, refund a "
                         "positive balance (through the original online channels first: onlineRefunds, the account "
                         "stays open until they settle, then close again; the rest in cash) or collect a negative one "
                         "in collectChannel, close the account "
                         "and emit account.closed, in one transaction. The final reading: finalReading (a register "
                         "total) is stored first as a manual reading on the household's one current meter, at "
                         "finalReadingAt (default now); without it, the newest reading of the household's current "
                         "meters; a household with no meter or no readings is charged up to now (nothing to price).")
    async def close_account(self, info: Info, input: CloseAccountInput) -> CloseAccountPayload:
        async def work(session: AsyncSession) -> ClosedAccount:
            return await close_account_at_desk(
                session, account_id=decode_id(input.account_id, "Account", field="accountId"),
                operator=_operator(info), now=utcnow(), idempotency_key=input.idempotency_key,
                tz=info.context.settings.tz, final_reading=input.final_reading,
                final_reading_at=input.final_reading_at,
                collect_channel=PaymentChannel(input.collect_channel) if input.collect_channel else PaymentChannel.cash,
                collect_reference=input.collect_reference, collect_bank_partner=input.collect_bank_partner,
                collect_bank_outlet=input.collect_bank_outlet, scope_patterns=_scope(info))

        def payload(closed: ClosedAccount | None, errors: list[UserError]) -> CloseAccountPayload:
            if closed is None:
                return CloseAccountPayload(account=None, final_charge=None, refund=None, collection=None,
                                           online_refunds=[], errors=errors)
            return CloseAccountPayload(account=account_type(info, closed.account), final_charge=closed.final_charge_fen,
                                       refund=_payment(closed.refund), collection=_payment(closed.collection),
                                       online_refunds=[], errors=errors)

        def describe(closed: ClosedAccount | None) -> str:
            if closed is None:
                return "销户"
            money = closed.refund or closed.collection
            if closed.online_refunds:
                return f"销户原路退款 {closed.account.id} (" + ", ".join(r.out_refund_no for r in closed.online_refunds) + ")"
            return f"销户 {closed.account.id}" + (f" ({money.serial_no})" if money is not None else "")

        kept: list[ClosedAccount] = []

        async def closing(session: AsyncSession) -> ClosedAccount:
            closed = await work(session)
            kept.append(closed)
            return closed

        done = await run_mutation(info, action="closeAccount", describe=describe, payload=payload, work=closing)
        if done.errors or not kept or not kept[0].online_refunds:
            return done
        # Committed: the refunds go to their gateways now rather than at the job's next run.
        done.online_refunds = await send_after_commit(info, kept[0].online_refunds)
        return done

    @strawberry.mutation(permission_classes=COLLECT, description="日结: hand over a cashier's day (default: yours) with "
                         "its takings and lock it: no more payments or reversals on it. Another cashier's needs "
                         "counter:day_all. Refused: CASHIER_DAY_HANDED_OVER (twice), CASHIER_DAY_UNBALANCED (takings "
                         "and ledger differ), a day in the future (BAD_USER_INPUT).")
    async def hand_over_day(self, info: Info, day: date, operator_id: strawberry.ID | None = None,
                            note: str | None = None) -> HandOverDayPayload:
        caller: Principal = info.context.caller

        async def work(session: AsyncSession) -> CashierDayFigures:
            if operator_id is not None:
                wanted = decode_id(operator_id, "StaffUser", field="operatorId")
                if wanted != caller.id:
                    if not caller.has(DAY_ALL):
                        raise Forbidden()
                    reach = await days.cashiers_in_scope(session, caller.scope_patterns())
                    if reach is not None and wanted not in reach:
                        raise NotFound(field="operatorId")
            elif caller.kind is not PrincipalKind.staff:
                raise BadUserInput("请指定收费员", "Name the cashier (operatorId)", field="operatorId")
            else:
                wanted = caller.id
            return await days.hand_over_day(session, operator_id=wanted, day=day, by=caller.name, now=utcnow(),
                                            tz=info.context.settings.tz, note=note or "")

        def payload(figures: CashierDayFigures | None, errors: list[UserError]) -> HandOverDayPayload:
            return HandOverDayPayload(cashier_day=CashierDayType.of(figures) if figures else None, errors=errors)

        def describe(figures: Any) -> str:
            return f"日结 {day.isoformat()} {figures.operator_name}" if figures else f"日结 {day.isoformat()}"

        return await run_mutation(info, action="handOverDay", describe=describe, payload=payload, work=work)
