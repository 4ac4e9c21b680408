"""Pending card / meter writes (待写卡 / 待写表): money credited to a ``prepaid_card`` or
``prepaid_meter`` account anywhere but at the card or the meter itself (an online
payment, a counter recharge) waits here until the IC cards issue writes it to the card or
the Acquisition issue sends it to the meter. One row per payment, written in the
payment's transaction by :func:`backend.payments.counter.record_payment`.

Money that goes back before it was written is taken back from the row in the same
transaction (:func:`take_back_pending_write`): a reversal (冲正) cancels it; a refund
through the original channel cancels it, or lowers it by a partial refund. Money written
already cannot go back that way: the reversal is refused (REVERSAL_NOT_ALLOWED) and so
is a refund of that payment (REFUND_NOT_POSSIBLE)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.models import BillingMode
from backend.db import raw_connection
from backend.payments.online.models import PendingWrite, PendingWriteState, PendingWriteTarget

if TYPE_CHECKING:
    from backend.payments.counter import PayableAccount

# The accounts whose money lives on a device: what reaches the account elsewhere must be
# written there too.
_TARGETS = {BillingMode.prepaid_card: PendingWriteTarget.card, BillingMode.prepaid_meter: PendingWriteTarget.meter}


def pending_target(mode: BillingMode) -> PendingWriteTarget | None:
    """Where money credited to an account of ``mode`` must still be written (None: nowhere)."""
    return _TARGETS.get(BillingMode(mode))


async def add_pending_write(session: AsyncSession, *, account: PayableAccount, payment_id: int, amount_fen: int,
                            now: datetime) -> PendingWrite | None:
    """The pending write of payment ``payment_id`` on ``account`` when its mode keeps money on
    a card or a meter (None otherwise). The caller commits."""
    target = pending_target(account.mode)
    if target is None:
        return None
    assert account.id is not None
    write = PendingWrite(account_id=account.id, household_id=account.household_id, payment_id=payment_id,
                         target=target, amount_fen=amount_fen, created_at=now)
    session.add(write)
    await session.flush()
    return write


_LOCK_PENDING = "SELECT id, state, amount_fen FROM pending_writes WHERE payment_id = $1 FOR UPDATE"
_CANCEL_PENDING = "UPDATE pending_writes SET state = 'cancelled', settled_at = $2, settled_by = $3 WHERE id = $1"
_REDUCE_PENDING = "UPDATE pending_writes SET amount_fen = amount_fen - $2 WHERE id = $1"


async def take_back_pending_write(session: AsyncSession, *, payment_id: int, amount_fen: int, now: datetime,
                                  by: str) -> bool:
    """Money of payment ``payment_id`` is going back (a reversal: all of it; a refund:
    ``amount_fen`` of it): its pending write, locked, must not write that money to the card
    or meter any more. A write for no more than ``amount_fen`` is ``cancelled`` (settled
    now, by ``by``); a larger one keeps the rest to write. Returns False, changing nothing,
    when the write was done already (the money is on the card or meter: the caller
    refuses); True otherwise (no pending write, cancelled before, or taken back now).
    The caller holds the account locked and commits."""
    driver = await raw_connection(session)
    row = await driver.fetchrow(_LOCK_PENDING, payment_id)
    if row is None or row["state"] == PendingWriteState.cancelled.value:
        return True
    if row["state"] == PendingWriteState.written.value:
        return False
    if amount_fen >= row["amount_fen"]:
        await driver.execute(_CANCEL_PENDING, row["id"], now, by[:100])
    else:
        await driver.execute(_REDUCE_PENDING, row["id"], amount_fen)
    return True


async def pending_write_done(session: AsyncSession, payment_id: int) -> bool:
    """Whether payment ``payment_id``'s money was written to the card or meter already."""
    driver = await raw_connection(session)
    state = await driver.fetchval("SELECT state FROM pending_writes WHERE payment_id = $1", payment_id)
    return state == PendingWriteState.written.value  # type: ignore[no-any-return]
