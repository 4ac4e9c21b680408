"""Pending card / meter writes (待写卡 / 待写表): money credited to a ``prepaid_card`` or
``prepaid_meter`` account anywhere but at the card or the meter itself (an online
payment, a counter recharge) waits here until the IC cards issue writes it to the card or
the Acquisition issue sends it to the meter. One row per payment, written in the
payment's transaction by :func:`backend.payments.counter.record_payment`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.models import Account, BillingMode
from backend.payments.online.models import PendingWrite, PendingWriteTarget

# The accounts whose money lives on a device: what reaches the account elsewhere must be
# written there too.
_TARGETS = {BillingMode.prepaid_card: PendingWriteTarget.card, BillingMode.prepaid_meter: PendingWriteTarget.meter}


def pending_target(mode: BillingMode) -> PendingWriteTarget | None:
    """Where money credited to an account of ``mode`` must still be written (None: nowhere)."""
    return _TARGETS.get(BillingMode(mode))


async def add_pending_write(session: AsyncSession, *, account: Account, payment_id: int, amount_fen: int,
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
