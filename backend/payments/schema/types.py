"""Payment types, their enums and DataLoaders. Billing's ``Account`` is reached by its
GraphQL name (``strawberry.lazy``) and built through the class the schema holds, so this
module imports nothing of billing's schema (tests/test_layers.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Annotated, Any

import strawberry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.billing.models import Account
from backend.graphql.loaders import SessionLoader
from backend.graphql.relay import Node, encode_id
from backend.graphql.scalars import Money
from backend.payments import browse
from backend.payments.days import CashierDayFigures, ChannelTakings
from backend.payments.models import Payment, PaymentChannel, PaymentKind, PaymentPurpose, PaymentStatus

AccountRef = Annotated["AccountType", strawberry.lazy("backend.billing.schema.types")]  # type: ignore[name-defined]  # noqa: F821

PaymentChannelEnum = strawberry.enum(PaymentChannel, name="PaymentChannel",
                                     description="现金 / 转账 / 刷卡 / 支付宝 / 微信 / 银行 / 其它")
PaymentPurposeEnum = strawberry.enum(PaymentPurpose, name="PaymentPurpose", description="充值 / 缴费 (账单)")
PaymentKindEnum = strawberry.enum(PaymentKind, name="PaymentKind", description="收款 / 退费")
PaymentStatusEnum = strawberry.enum(PaymentStatus, name="PaymentStatus", description="成功 / 已冲正")


class AccountByIdLoader(SessionLoader[int, Account | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Account]:
        found = await session.execute(select(Account).where(Account.id.in_(list(keys))))  # type: ignore[union-attr]
        return {account.id: account for account in found.scalars() if account.id is not None}


class PaymentRowByIdLoader(SessionLoader[int, browse.PaymentRow | None]):
    """A payment with its household's place (for payments a mutation returns; lists fetch
    it with the page)."""

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, browse.PaymentRow]:
        return await browse.payment_rows_by_ids(session, keys)


def account_type(info: Info, account: Account) -> Any:
    """Billing's ``Account`` GraphQL object of ``account``, built by the class the executing
    schema holds under that name."""
    found: Any = info.schema.get_type_by_name("Account")
    return found.origin.from_row(account)


@strawberry.type(name="Payment", description="A payment (收费记录) of any channel: money in (collect: a recharge or "
                 "a bill payment) or out (refund), never edited; a reversal (冲正) marks it reversed and posts the "
                 "opposite ledger entry.")
class PaymentType(Node):
    serial_no: str = strawberry.field(description="流水号, unique.")
    kind: PaymentKindEnum  # type: ignore[valid-type]
    channel: PaymentChannelEnum  # type: ignore[valid-type]
    purpose: PaymentPurposeEnum  # type: ignore[valid-type]
    amount: Money = strawberry.field(description="Always positive; `kind` gives the direction.")  # type: ignore[valid-type]
    reference: str | None = strawberry.field(description="POS 参考号, transfer serial or the bank's transaction number.")
    bank_partner: str | None
    bank_outlet: str | None
    operator_name: str = strawberry.field(description="收费员: who took it (系统 names for money that came by itself).")
    status: PaymentStatusEnum  # type: ignore[valid-type]
    paid_at: datetime
    business_day: date = strawberry.field(description="The cashier's business day (日结) in the utility's zone.")
    reversed_at: datetime | None
    reversed_by: str | None
    reversal_reason: str | None
    note: str
    receipts_printed: int = strawberry.field(description="How many times its receipt was printed (above 1: 补打).")
    pk: strawberry.Private[int]
    account_pk: strawberry.Private[int]
    row: strawberry.Private[browse.PaymentRow | None] = None

    @classmethod
    def from_row(cls, payment: Payment, row: browse.PaymentRow | None = None) -> PaymentType:
        assert payment.id is not None
        return cls(
            id=encode_id("Payment", payment.id), serial_no=payment.serial_no, kind=payment.kind,
            channel=payment.channel, purpose=payment.purpose, amount=payment.amount_fen, reference=payment.reference,
            bank_partner=payment.bank_partner, bank_outlet=payment.bank_outlet, operator_name=payment.operator_name,
            status=payment.status, paid_at=payment.paid_at, business_day=payment.business_day,
            reversed_at=payment.reversed_at, reversed_by=payment.reversed_by, reversal_reason=payment.reversal_reason,
            note=payment.note, receipts_printed=payment.receipts_printed, pk=payment.id,
            account_pk=payment.account_id, row=row,
        )

    @classmethod
    def from_list_row(cls, row: browse.PaymentRow) -> PaymentType:
        return cls.from_row(row.payment, row)

    async def _row(self, info: Info) -> browse.PaymentRow | None:
        if self.row is None:
            self.row = await info.context.loader(PaymentRowByIdLoader).load(self.pk)
        return self.row

    @strawberry.field(description="The account it was paid to.")
    async def account(self, info: Info) -> AccountRef | None:
        account = await info.context.loader(AccountByIdLoader).load(self.account_pk)
        return account_type(info, account) if account is not None else None

    @strawberry.field(description="缴费号: the household's account number (编码).")
    async def account_no(self, info: Info) -> str:
        row = await self._row(info)
        return row.account_no if row else ""

    @strawberry.field(description="用户姓名: the household's registered name.")
    async def household_name(self, info: Info) -> str:
        row = await self._row(info)
        return row.household_name if row else ""

    @strawberry.field(description="小区: the community above the household; null when the tree has none.")
    async def community(self, info: Info) -> str | None:
        row = await self._row(info)
        return row.community if row else None

    @strawberry.field(description="楼宇: the building above the household; null when the tree has none.")
    async def building(self, info: Info) -> str | None:
        row = await self._row(info)
        return row.building if row else None

    @strawberry.field(description="单元: the unit area above the household; null when the tree has none.")
    async def unit(self, info: Info) -> str | None:
        row = await self._row(info)
        return row.unit if row else None

    @strawberry.field(description="房间: the household's room as registered (0101).")
    async def room(self, info: Info) -> str | None:
        row = await self._row(info)
        return row.room if row else None

    @strawberry.field(description="楼-单元-房间 (1-1-0101), as Household.roomLabel; null without a room.")
    async def room_label(self, info: Info) -> str | None:
        row = await self._row(info)
        return row.room_label if row else None


@strawberry.type(name="ChannelTakings", description="One channel's takings of a cashier's day (or their totals).")
class ChannelTakingsType:
    channel: PaymentChannelEnum | None = strawberry.field(description="Null on the totals line.")  # type: ignore[valid-type]
    collected: Money = strawberry.field(description="收款: money in.")  # type: ignore[valid-type]
    refunded: Money = strawberry.field(description="退费: money out (closed accounts' balances).")  # type: ignore[valid-type]
    reversed: Money = strawberry.field(description="冲正: the day's collections reversed since.")  # type: ignore[valid-type]
    net: Money = strawberry.field(description="collected − refunded − reversed: what the till holds.")  # type: ignore[valid-type]
    count: int = strawberry.field(description="Payments (collections and refunds).")

    @classmethod
    def of(cls, takings: ChannelTakings, *, total: bool = False) -> ChannelTakingsType:
        return cls(channel=None if total else takings.channel, collected=takings.collected_fen,
                   refunded=takings.refunded_fen, reversed=takings.reversed_fen, net=takings.net_fen,
                   count=takings.count)


@strawberry.type(name="CashierDay", description="日结: one cashier's takings for one business day, reconciled with "
                 "the ledger entries its payments posted; once handed over the day takes no more payments or "
                 "reversals.")
class CashierDayType:
    operator_id: strawberry.ID = strawberry.field(description="The cashier (a StaffUser id).")
    operator_name: str
    day: date
    channels: list[ChannelTakingsType] = strawberry.field(description="Per channel with payments that day.")
    totals: ChannelTakingsType
    ledger: Money = strawberry.field(  # type: ignore[valid-type]
        description="The sum of the ledger entries the day's payments posted (their entries and reversals).")
    balanced: bool = strawberry.field(description="ledger = totals.net, to the fen (always, unless a bug).")
    handed_over: bool
    handed_over_at: datetime | None
    handed_over_by: str | None

    @classmethod
    def of(cls, figures: CashierDayFigures) -> CashierDayType:
        handed = figures.handed_over
        return cls(
            operator_id=encode_id("StaffUser", figures.operator_id), operator_name=figures.operator_name,
            day=figures.day, channels=[ChannelTakingsType.of(c) for c in figures.channels],
            totals=ChannelTakingsType.of(figures.totals, total=True), ledger=figures.ledger_fen,
            balanced=figures.balanced, handed_over=handed is not None,
            handed_over_at=handed.handed_over_at if handed else None,
            handed_over_by=handed.handed_over_by if handed else None,
        )
