"""An account's pending card and meter writes (待写卡 / 待写表) on billing's ``Account``:
money credited to a ``prepaid_card`` or ``prepaid_meter`` account somewhere other than at
the card or the meter (online, at the counter without the card), waiting for the IC-card
station or the meter (``backend.payments.online.models.PendingWrite``). The account is
already in the caller's reach when its fields resolve."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import strawberry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from strawberry.types import Info

from backend.graphql.extend import TypeExtension
from backend.graphql.loaders import SessionLoader
from backend.graphql.scalars import Money
from backend.payments.models import Payment
from backend.payments.online.models import PendingWrite, PendingWriteState, PendingWriteTarget

PendingWriteTargetEnum = strawberry.enum(PendingWriteTarget, name="PendingWriteTarget",
                                         description="待写卡 (the IC card) / 待写表 (the meter)")
PendingWriteStateEnum = strawberry.enum(PendingWriteState, name="PendingWriteState",
                                        description="待写 / 已写 / 已取消 (its payment was reversed or refunded)")


@strawberry.type(name="PendingWrite", description="Money credited to a card or meter account away from the card or "
                 "the meter, waiting to be written to it (待写卡 / 待写表).")
class PendingWriteType:
    target: PendingWriteTargetEnum  # type: ignore[valid-type]
    state: PendingWriteStateEnum  # type: ignore[valid-type]
    amount: Money  # type: ignore[valid-type]
    payment_serial_no: str = strawberry.field(description="流水号 of the payment that credited it.")
    created_at: datetime
    settled_at: datetime | None = strawberry.field(description="When it was written or cancelled.")
    settled_by: str | None
    purchase_count: int | None = strawberry.field(description="购水次数: the purchase count a meter write carries, "
                                                  "once its first write_purchase command was queued.")
    sent_at: datetime | None = strawberry.field(description="When a meter write first went to the meter: from then on "
                                                "its payment can no longer be reversed or refunded.")
    held_reason: str | None = strawberry.field(description="Why a meter write waits for staff instead of being sent "
                                               "again (the meter's purchase count is not the one expected).")


# (account, pending only?) -> the account's writes, newest first.
_Key = tuple[int, bool]


class PendingWritesByAccountLoader(SessionLoader[_Key, list[PendingWriteType]]):
    missing: list[PendingWriteType] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[_Key]) -> Mapping[_Key, list[PendingWriteType]]:
        rows = await session.execute(
            select(PendingWrite, col(Payment.serial_no))
            .join(Payment, Payment.id == PendingWrite.payment_id)  # type: ignore[arg-type]
            .where(PendingWrite.account_id.in_({account for account, _ in keys}))  # type: ignore[attr-defined]
            .order_by(PendingWrite.created_at.desc(), PendingWrite.id.desc()))  # type: ignore[attr-defined,union-attr]
        by_account: dict[int, list[PendingWriteType]] = defaultdict(list)
        for write, serial_no in rows.all():
            by_account[write.account_id].append(PendingWriteType(
                target=write.target, state=write.state, amount=write.amount_fen, payment_serial_no=serial_no,
                created_at=write.created_at, settled_at=write.settled_at, settled_by=write.settled_by,
                purchase_count=write.purchase_count, sent_at=write.sent_at, held_reason=write.held_reason))
        return {(account, pending_only): [w for w in by_account.get(account, [])
                                          if not pending_only or w.state is PendingWriteState.pending]
                for account, pending_only in keys}


@strawberry.type
class AccountPendingWriteFields:
    @strawberry.field(description="待写卡 / 待写表: money credited to this card or meter account away from the card or "
                      "the meter, newest first; only those still to be written unless `all` is true.")
    async def pending_writes(self, info: Info, all: bool = False) -> list[PendingWriteType]:
        account: Any = self  # billing's Account, already in the caller's reach
        loader: PendingWritesByAccountLoader = info.context.loader(PendingWritesByAccountLoader)
        return await loader.load((account.pk, not all))


EXTENSIONS = (TypeExtension("Account", AccountPendingWriteFields),)
