"""Pending card / meter writes (待写卡 / 待写表): money credited to a ``prepaid_card`` or
``prepaid_meter`` account anywhere but at the card or the meter itself (an online
payment, a counter recharge) waits here until the IC cards issue writes it to the card or
the Acquisition issue sends it to the meter. One row per payment, written in the
payment's transaction by :func:`backend.payments.counter.record_payment`.

Money that goes back before it was written is taken back from the row in the same
transaction (:func:`take_back_pending_write`): a reversal (冲正) cancels it; a refund
through the original channel cancels it, or lowers it by a partial refund. Money written
already cannot go back that way: the reversal is refused (REVERSAL_NOT_ALLOWED) and so
is a refund of that payment (REFUND_NOT_POSSIBLE). A meter write counts as written from
the moment a command carrying it was claimed for the wire (``sent_at``): from then on the
money may be on the meter whatever the reply says.

**Meter writes** are carried out by the remote domain (``backend.remote.purchases``, a
later domain, so it calls the functions below and payments imports nothing of it): it
gives a write its meter, purchase count and command (:func:`carry_meter_write`), marks
it sent when a worker claims that command (:func:`unwanted_meter_commands`, which is also
how a command whose write was taken back meanwhile is found and cancelled before it
reaches the meter), written when the meter confirmed the count
(:func:`meter_write_written`), or held for staff (:func:`hold_meter_write`) until staff
release it (:func:`release_meter_write`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
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


_LOCK_PENDING = "SELECT id, state, amount_fen, sent_at FROM pending_writes WHERE payment_id = $1 FOR UPDATE"
_CANCEL_PENDING = "UPDATE pending_writes SET state = 'cancelled', settled_at = $2, settled_by = $3 WHERE id = $1"
_REDUCE_PENDING = "UPDATE pending_writes SET amount_fen = amount_fen - $2 WHERE id = $1"


async def take_back_pending_write(session: AsyncSession, *, payment_id: int, amount_fen: int, now: datetime,
                                  by: str) -> bool:
    """Money of payment ``payment_id`` is going back (a reversal: all of it; a refund:
    ``amount_fen`` of it): its pending write, locked, must not write that money to the card
    or meter any more. A write for no more than ``amount_fen`` is ``cancelled`` (settled
    now, by ``by``); a larger one keeps the rest to write. Returns False, changing nothing,
    when the write was done already (the money is on the card or meter: the caller
    refuses), or sent to the meter already (it may hold the money: the caller refuses
    too); True otherwise (no pending write, cancelled before, or taken back now). A
    ``write_purchase`` command queued for it and not yet claimed is then cancelled by the
    remote domain before it reaches the meter (:func:`unwanted_meter_commands`).
    The caller holds the account locked and commits."""
    driver = await raw_connection(session)
    row = await driver.fetchrow(_LOCK_PENDING, payment_id)
    if row is None or row["state"] == PendingWriteState.cancelled.value:
        return True
    if row["state"] == PendingWriteState.written.value or row["sent_at"] is not None:
        return False
    if amount_fen >= row["amount_fen"]:
        await driver.execute(_CANCEL_PENDING, row["id"], now, by[:100])
    else:
        await driver.execute(_REDUCE_PENDING, row["id"], amount_fen)
    return True


async def pending_write_done(session: AsyncSession, payment_id: int) -> bool:
    """Whether payment ``payment_id``'s money was written to the card or meter already (or
    sent to the meter, which may hold it)."""
    driver = await raw_connection(session)
    done = await driver.fetchval("SELECT state = 'written' OR sent_at IS NOT NULL FROM pending_writes "
                                 "WHERE payment_id = $1", payment_id)
    return bool(done)


# --------------------------------------------------------------------------- meter writes


@dataclass(frozen=True, slots=True)
class MeterWrite:
    """A pending meter write as the remote domain carries it out."""

    id: int
    account_id: int
    household_id: int
    payment_id: int
    amount_fen: int
    meter_id: int | None
    purchase_count: int | None
    command_id: int | None
    sent_at: datetime | None
    held_reason: str | None


_WRITE_COLUMNS = ("id, account_id, household_id, payment_id, amount_fen, meter_id, purchase_count, command_id, "
                  "sent_at, held_reason")


def _write(row: Any) -> MeterWrite:
    return MeterWrite(*row)


async def households_with_meter_writes(session: AsyncSession, *, account_ids: Sequence[int] | None = None) -> list[int]:
    """The households with pending meter writes (of ``account_ids`` only, when given),
    those whose oldest write is oldest first."""
    narrow = "" if account_ids is None else " AND account_id = ANY(CAST(:accounts AS bigint[]))"
    rows = await session.execute(text(
        "SELECT household_id FROM pending_writes WHERE state = 'pending' AND target = 'meter'" + narrow +
        " GROUP BY household_id ORDER BY min(id)"), {} if account_ids is None else {"accounts": list(account_ids)})
    return [row[0] for row in rows]


async def meters_of_meter_writes(session: AsyncSession, household_id: int) -> list[int]:
    """The meters the household's pending meter writes were given already."""
    rows = await session.execute(text(
        "SELECT DISTINCT meter_id FROM pending_writes WHERE household_id = :household AND state = 'pending' "
        "AND target = 'meter' AND meter_id IS NOT NULL ORDER BY meter_id"), {"household": household_id})
    return [row[0] for row in rows]


async def meter_write_on(session: AsyncSession, meter_id: int) -> MeterWrite | None:
    """The pending write that has a purchase count on ``meter_id`` (one at a time goes to a
    meter, so at most one), locked; None when the meter has none in hand."""
    row = (await session.execute(text(
        f"SELECT {_WRITE_COLUMNS} FROM pending_writes WHERE meter_id = :meter AND state = 'pending' "
        "ORDER BY id LIMIT 1 FOR UPDATE"), {"meter": meter_id})).first()
    return None if row is None else _write(row)


async def next_meter_write(session: AsyncSession, household_id: int) -> MeterWrite | None:
    """The household's oldest pending meter write that has no meter yet, locked."""
    row = (await session.execute(text(
        f"SELECT {_WRITE_COLUMNS} FROM pending_writes WHERE household_id = :household AND state = 'pending' "
        "AND target = 'meter' AND meter_id IS NULL AND held_reason IS NULL ORDER BY id LIMIT 1 FOR UPDATE"),
        {"household": household_id})).first()
    return None if row is None else _write(row)


async def meter_write_of_command(session: AsyncSession, command_id: int) -> MeterWrite | None:
    """The pending write ``command_id`` carries (its newest command), locked; None when it
    was written, cancelled or carried by another command since."""
    row = (await session.execute(text(
        f"SELECT {_WRITE_COLUMNS} FROM pending_writes WHERE command_id = :command AND state = 'pending' FOR UPDATE"),
        {"command": command_id})).first()
    return None if row is None else _write(row)


async def carry_meter_write(session: AsyncSession, *, write_id: int, meter_id: int, purchase_count: int,
                            command_id: int) -> None:
    """Write ``write_id`` goes to ``meter_id`` as purchase ``purchase_count`` by command
    ``command_id`` (the caller holds it locked, pending)."""
    await session.execute(text(
        "UPDATE pending_writes SET meter_id = :meter, purchase_count = :count, command_id = :command WHERE id = :id"),
        {"id": write_id, "meter": meter_id, "count": purchase_count, "command": command_id})


async def renumber_meter_write(session: AsyncSession, *, write_id: int, purchase_count: int) -> None:
    """The meter was found to count from elsewhere before it ever took this write: it goes
    out again as ``purchase_count``, and can be taken back again until then."""
    await session.execute(text(
        "UPDATE pending_writes SET purchase_count = :count, sent_at = NULL WHERE id = :id AND state = 'pending'"),
        {"id": write_id, "count": purchase_count})


async def unwanted_meter_commands(session: AsyncSession, commands: Sequence[tuple[int, int, int]], *,
                                  sending_at: datetime | None) -> set[int]:
    """Of ``commands`` ((command id, purchase count, amount in fen) of write_purchase
    commands), those a meter write carried and no longer wants: it was taken back
    (cancelled), written, held, or lowered by a partial refund since (its amount or count
    is not the command's). They are for the caller to cancel. With ``sending_at`` (a
    worker claimed them for the wire) the writes that still want theirs are marked sent,
    so they can no longer be taken back. A command no write ever carried (queued by
    hand) is left alone. Waits for a reversal holding such a write."""
    if not commands:
        return set()
    ids, counts, amounts = zip(*commands, strict=True)
    values = {"ids": list(ids), "counts": list(counts), "amounts": list(amounts), "now": sending_at}
    commands_sql = ("unnest(CAST(:ids AS bigint[]), CAST(:counts AS integer[]), CAST(:amounts AS bigint[])) "
                    "AS c(id, purchase_count, amount_fen)")
    wanted = ("w.command_id = c.id AND w.purchase_count = c.purchase_count AND w.amount_fen = c.amount_fen "
              "AND w.state = 'pending' AND w.held_reason IS NULL")
    if sending_at is not None:
        await session.execute(text(
            f"UPDATE pending_writes w SET sent_at = coalesce(w.sent_at, CAST(:now AS timestamptz)) FROM {commands_sql} "
            f"WHERE {wanted}"), values)
    rows = await session.execute(text(
        f"SELECT c.id FROM {commands_sql} WHERE EXISTS (SELECT 1 FROM pending_writes w WHERE w.command_id = c.id) "
        f"AND NOT EXISTS (SELECT 1 FROM pending_writes w WHERE {wanted})"), values)
    return {row[0] for row in rows}


async def meter_write_written(session: AsyncSession, *, write_id: int, now: datetime, by: str) -> None:
    """The meter confirmed it holds write ``write_id``'s purchase: written, now, by ``by``."""
    await session.execute(text(
        "UPDATE pending_writes SET state = 'written', settled_at = :now, settled_by = :by "
        "WHERE id = :id AND state = 'pending'"), {"id": write_id, "now": now, "by": by[:100]})


async def release_meter_write(session: AsyncSession, *, write_id: int, purchase_count: int) -> None:
    """Staff released held write ``write_id``: it goes out again as ``purchase_count``."""
    await session.execute(text(
        "UPDATE pending_writes SET held_reason = NULL, purchase_count = :count WHERE id = :id AND state = 'pending'"),
        {"id": write_id, "count": purchase_count})


async def hold_meter_write(session: AsyncSession, *, write_id: int, reason: str) -> None:
    """Write ``write_id`` waits for staff (``reason``) instead of being sent again."""
    await session.execute(text("UPDATE pending_writes SET held_reason = :reason WHERE id = :id AND state = 'pending'"),
                          {"id": write_id, "reason": reason[:500]})
