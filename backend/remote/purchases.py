"""Meter-side prepaid (智能水表直接预付费): an account in mode ``prepaid_meter`` keeps its
balance in the meter. Money credited to it anywhere else (the counter, an online
payment) waits as a pending meter write (payments' ``pending_writes``, target ``meter``)
until a ``write_purchase`` command has put it on the meter; billing's settlement never
debits such an account (``backend.billing.settlement``: the meter charges the water).

**Which meter.** The one meter of the household that keeps the balance: the lowest-id
meter serving the household now that has a valve (a prepaid meter closes it when the
money runs out) and a link (``service.valve_meters_of_household``). A write keeps the
meter it was first given; a household without such a meter keeps its writes pending
(the minute job looks again).

**Purchase counts.** The meter takes only its next purchase count (CJ/T 188 ``A013``
carries it mod 256) and answers with the count it holds. ``meter_purchase_counts`` keeps
per meter the count it confirmed last; a write gets that count + 1 when its first
command is queued and keeps it, so a retry repeats the same count and the meter never
adds money twice. Writes go to a meter **one at a time**, oldest first, each its own
purchase (not combined: the meter's last purchase then matches one receipt); the next
one is queued as soon as the meter confirmed the one before.

**Lifecycle.** :func:`send_meter_writes` (the handler of ``payment.succeeded``, the
minute job, and the reconciliation once a purchase is confirmed) queues the next
purchase of each meter as the system actor. When a worker claims it,
:func:`purchases_claimed` marks its write sent (from then on a reversal or refund is
refused: the meter may hold the money) or cancels the command when its write was taken
back meanwhile (a reversal, a refund) or lowered (a partial refund). The worker reads
the meter's count back before writing (``acquisition.commands``), so a repeat whose
reply was lost is recognised without sending. :func:`reconcile_purchases` (the handler
of ``command.finished``) then decides:

- the meter holds the count: the write is ``written`` (by 系统) and the meter's next
  purchase is queued;
- the meter holds the count before it (the write failed there) or was not heard: the
  write stays pending; the minute job sends it again (same count) once
  :data:`RETRY_AFTER` has passed since the failure;
- the meter holds another count: on a meter never heard from before, that count is
  taken as its starting point and the write goes out again as the next one (a meter
  fitted with purchases on it); otherwise nobody can explain it: the write is held
  (``held_reason``) and an alarm ``purchase_mismatch`` opens on the meter for staff, and
  nothing more is sent to that meter until staff, having looked at the meter, say which
  count it holds (:func:`resume_meter_purchases`).

:func:`retry_meter_purchases` (the minute job) also cancels queued purchases whose write
no longer wants them, so a reversal's command does not wait for a worker to be cancelled.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.alarms.models import AlarmKind, AlarmSubjectKind
from backend.alarms.service import AlarmSubject, close_cleared_alarms, open_alarms
from backend.auth.principal import Principal
from backend.errors import DomainError, ErrorCode, Forbidden, NotFound
from backend.events.service import Event, emit_event, payload_of
from backend.payments.events import PaymentSucceeded
from backend.payments.online import pending
from backend.remote import service
from backend.remote.catalog import PURCHASE
from backend.remote.errors import MeterUnreachable
from backend.remote.events import CommandFinished
from backend.remote.models import CommandKind, CommandState, MeterPurchaseCount, RemoteCommand

if TYPE_CHECKING:
    from backend.runtime import Runtime

# A purchase that failed goes out again after this long (a meter that is not heard is
# not asked every minute; its communication alarm tells staff meanwhile).
RETRY_AFTER = timedelta(minutes=10)
# An automatic purchase may wait for a worker this long, like every automatic command.
PURCHASE_WAIT_S = 3600
# Who writes the money to the meter, as pending_writes.settled_by shows it.
SETTLED_BY = "系统"
WIRE_COUNTS = 256  # A013 carries the count in one byte
CANCELLED_REASON = "付款已退回, 购水未写表 / the payment went back before the purchase was sent"
_LIVE = (CommandState.queued.value, CommandState.pending_delivery.value, CommandState.sent.value)
_BATCHES = uuid.UUID("0d6c2a8e-5b1f-4f3a-8e27-9c4b1a7d3e60")


@dataclass(frozen=True, slots=True)
class _PurchaseCommand:
    id: int
    meter_id: int
    state: CommandState
    reply: Mapping[str, Any] | None
    finished_at: datetime | None


async def _locked_count(session: AsyncSession, meter_id: int, now: datetime) -> MeterPurchaseCount:
    """The meter's purchase count row, created at 0 (nothing heard yet) and locked: one
    purchase decision at a time per meter."""
    await session.execute(text(
        "INSERT INTO meter_purchase_counts (meter_id, confirmed_count, updated_at) VALUES (:meter, 0, :now) "
        "ON CONFLICT (meter_id) DO NOTHING"), {"meter": meter_id, "now": now})
    row = (await session.execute(text(
        "SELECT meter_id, confirmed_count, heard_at, updated_at FROM meter_purchase_counts WHERE meter_id = :meter "
        "FOR UPDATE"), {"meter": meter_id})).one()
    return MeterPurchaseCount(meter_id=row.meter_id, confirmed_count=row.confirmed_count, heard_at=row.heard_at,
                              updated_at=row.updated_at)


async def _set_count(session: AsyncSession, meter_id: int, *, confirmed: int | None, now: datetime) -> None:
    """The meter was heard now (and holds ``confirmed`` when given)."""
    await session.execute(text(
        "UPDATE meter_purchase_counts SET confirmed_count = coalesce(:count, confirmed_count), heard_at = :now, "
        "updated_at = :now WHERE meter_id = :meter"), {"meter": meter_id, "count": confirmed, "now": now})


async def _command(session: AsyncSession, command_id: int | None) -> _PurchaseCommand | None:
    if command_id is None:
        return None
    row = (await session.execute(text(
        "SELECT id, meter_id, state, reply, finished_at FROM remote_commands WHERE id = :id"), {"id": command_id})).first()
    return None if row is None else _PurchaseCommand(row.id, row.meter_id, CommandState(row.state), row.reply,
                                                     row.finished_at)


async def balance_meter(session: AsyncSession, household_id: int) -> int | None:
    """The meter that keeps the household's balance (module docstring), or None."""
    meters = await service.valve_meters_of_household(session, household_id)
    return meters[0] if meters else None


async def _send_next(session: AsyncSession, *, meter_id: int, household_id: int, actor: Principal, now: datetime,
                     retry_after: timedelta) -> int | None:
    """Queue the meter's next purchase when none is on its way; the command's id or None."""
    count = await _locked_count(session, meter_id, now)
    write = await pending.meter_write_on(session, meter_id)
    if write is not None:
        if write.held_reason is not None:
            return None  # waits for staff
        last = await _command(session, write.command_id)
        if last is not None and (last.state.value in _LIVE or (
                last.state is not CommandState.cancelled and last.finished_at is not None
                and last.finished_at > now - retry_after)):
            return None  # on its way, or failed a moment ago
        purchase_count = write.purchase_count
    else:
        write = await pending.next_meter_write(session, household_id)
        if write is None:
            return None
        purchase_count = count.confirmed_count + 1
    assert purchase_count is not None
    try:
        batch = await service.queue_commands(
            session, selection=service.Selection(meter_ids=(meter_id,)), kind=CommandKind.write_purchase,
            params={"purchase_count": purchase_count, "amount_fen": write.amount_fen}, issued_by=actor,
            time_limit_s=None, now=now, wait_s=PURCHASE_WAIT_S,
            batch_id=uuid.uuid5(_BATCHES, f"write:{write.id}:{now.isoformat()}"))
    except (MeterUnreachable, NotFound):
        # The write's meter left its link (or the archive) since: refused before anything
        # was written; the write waits, the minute job looks again.
        return None
    [command_id] = batch.command_ids
    await pending.carry_meter_write(session, write_id=write.id, meter_id=meter_id, purchase_count=purchase_count,
                                    command_id=command_id)
    return command_id


async def send_meter_writes(session: AsyncSession, *, actor: Principal, now: datetime,
                            account_ids: Sequence[int] | None = None,
                            retry_after: timedelta = RETRY_AFTER) -> list[int]:
    """Queue, for each household with pending meter writes (of ``account_ids`` only, when
    given), its meter's next purchase unless one is on its way (module docstring), as
    ``actor`` (the system actor, with ``remote:purchase``). Returns the commands queued."""
    queued: list[int] = []
    for household_id in await pending.households_with_meter_writes(session, account_ids=account_ids):
        meter_id = await balance_meter(session, household_id)
        # A write given a meter before keeps it (the household's balance meter may have changed since).
        meters = set(await pending.meters_of_meter_writes(session, household_id))
        meters |= {meter_id} if meter_id is not None else set()
        for meter in sorted(meters):
            command_id = await _send_next(session, meter_id=meter, household_id=household_id, actor=actor, now=now,
                                          retry_after=retry_after)
            if command_id is not None:
                queued.append(command_id)
    return queued


async def purchases_claimed(session: AsyncSession, commands: Sequence[RemoteCommand], now: datetime) -> list[int]:
    """A worker claimed these write_purchase commands for the wire: their writes are sent
    from now on; the commands whose write no longer wants them are cancelled (module
    docstring) and returned. A purchase queued by hand, which no write carries, goes out
    as it is."""
    keys = [(c.id or 0, int(c.params["purchase_count"]), int(c.params["amount_fen"])) for c in commands]
    unwanted = await pending.unwanted_meter_commands(session, keys, sending_at=now)
    return await cancel_purchases(session, command_ids=sorted(unwanted), now=now, states=_LIVE)


async def cancel_purchases(session: AsyncSession, *, command_ids: Sequence[int], now: datetime,
                           states: Sequence[str] = (CommandState.queued.value,)) -> list[int]:
    """Cancel these write_purchase commands still in one of ``states`` (by default: not
    claimed; the claim itself cancels the ones it just claimed) because their payment
    went back before they reached the meter; returns those cancelled, with one
    ``command.finished``."""
    if not command_ids:
        return []
    rows = await session.execute(text(
        "UPDATE remote_commands SET state = 'cancelled', failure_reason = :reason, sent_at = NULL, finished_at = :now, "
        "updated_at = :now "
        "WHERE id = ANY(CAST(:ids AS bigint[])) AND kind = 'write_purchase' "
        "AND state = ANY(CAST(:states AS text[])) RETURNING id"),
        {"ids": list(command_ids), "reason": CANCELLED_REASON, "now": now, "states": list(states)})
    cancelled = sorted(row[0] for row in rows)
    if cancelled:
        await emit_event(session, "command.finished", CommandFinished(tuple(cancelled), CommandState.cancelled.value))
    return cancelled


def _held_count(reply: Mapping[str, Any] | None) -> int | None:
    """The purchase count the meter said it holds (the wire's, mod 256), if it was heard."""
    if not reply or reply.get("purchase_count") is None:
        return None
    return int(reply["purchase_count"])


async def reconcile_purchase(session: AsyncSession, *, command_id: int, actor: Principal, now: datetime) -> list[int]:
    """What a finished write_purchase says about its write (module docstring); returns the
    commands queued after it (the meter's next purchase, or the renumbered one)."""
    command = await _command(session, command_id)
    if command is None or command.state is CommandState.cancelled:
        return []
    count = await _locked_count(session, command.meter_id, now)
    write = await pending.meter_write_of_command(session, command_id)
    if write is None or write.purchase_count is None:
        return []  # written, taken back or sent again since
    held = _held_count(command.reply)
    sent = write.purchase_count
    if command.state is CommandState.succeeded and held == sent % WIRE_COUNTS:
        await _set_count(session, command.meter_id, confirmed=sent, now=now)
        await pending.meter_write_written(session, write_id=write.id, now=now, by=SETTLED_BY)
        return await send_meter_writes(session, actor=actor, now=now, account_ids=[write.account_id])
    if held is None or held in (sent % WIRE_COUNTS, (sent - 1) % WIRE_COUNTS):
        if held is not None:
            await _set_count(session, command.meter_id, confirmed=None, now=now)
        return []  # not heard, or heard without the purchase: sent again later
    if count.heard_at is None and count.confirmed_count == sent - 1:
        # Never heard before: the meter counts from purchases made before this system.
        await _set_count(session, command.meter_id, confirmed=held, now=now)
        await pending.renumber_meter_write(session, write_id=write.id, purchase_count=held + 1)
        return await send_meter_writes(session, actor=actor, now=now, account_ids=[write.account_id],
                                       retry_after=timedelta(0))
    reason = (f"水表购水次数为 {held}, 应为 {(sent - 1) % WIRE_COUNTS} 或 {sent % WIRE_COUNTS} / "
              f"the meter holds purchase count {held}, not {(sent - 1) % WIRE_COUNTS} or {sent % WIRE_COUNTS}")
    await pending.hold_meter_write(session, write_id=write.id, reason=reason)
    await open_alarms(session, subject_kind=AlarmSubjectKind.meter, kind=AlarmKind.purchase_mismatch, subjects=[
        AlarmSubject(command.meter_id, value=Decimal(held), threshold=Decimal(sent % WIRE_COUNTS), detail=reason)],
        now=now)
    return []


async def reconcile_purchases(runtime: Runtime, session: AsyncSession, event: Event) -> list[int]:
    """The handler of ``command.finished``: each finished write_purchase of the event
    reconciled against its write (:func:`reconcile_purchase`)."""
    finished = payload_of(event, CommandFinished)
    if finished.state == CommandState.cancelled.value:
        return []
    rows = await session.execute(text(
        "SELECT id FROM remote_commands WHERE id = ANY(CAST(:ids AS bigint[])) AND kind = 'write_purchase' ORDER BY id"),
        {"ids": list(finished.command_ids)})
    queued: list[int] = []
    for (command_id,) in rows.all():
        queued.extend(await reconcile_purchase(session, command_id=command_id, actor=runtime.actor, now=runtime.now()))
    return queued


async def send_paid_meter_writes(runtime: Runtime, session: AsyncSession, event: Event) -> list[int]:
    """The handler of ``payment.succeeded``: the account's pending meter writes, if any,
    start on their way (:func:`send_meter_writes`)."""
    paid = payload_of(event, PaymentSucceeded)
    return await send_meter_writes(session, actor=runtime.actor, now=runtime.now(), account_ids=[paid.account_id])


_UNWANTED_CANDIDATES = text("""
SELECT id, params FROM remote_commands
 WHERE kind = 'write_purchase' AND state = 'queued' ORDER BY id LIMIT 1000
""")


async def retry_meter_purchases(session: AsyncSession, *, actor: Principal, now: datetime) -> tuple[list[int], list[int]]:
    """The minute job's work: cancel the queued purchases their write no longer wants, then
    queue each meter's next purchase (a failed one again, after :data:`RETRY_AFTER`).
    Returns (cancelled, queued)."""
    rows = (await session.execute(_UNWANTED_CANDIDATES)).all()
    keys = [(row.id, int(row.params["purchase_count"]), int(row.params["amount_fen"])) for row in rows]
    unwanted = await pending.unwanted_meter_commands(session, keys, sending_at=None)
    cancelled = await cancel_purchases(session, command_ids=sorted(unwanted), now=now)
    queued = await send_meter_writes(session, actor=actor, now=now)
    return cancelled, queued


async def retry_meter_purchases_job(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    async with runtime.sessions() as session, session.begin():
        cancelled, queued = await retry_meter_purchases(session, actor=runtime.actor, now=runtime.now())
    return len(cancelled) + len(queued)


async def resume_meter_purchases(session: AsyncSession, *, meter_id: int, meter_count: int, principal: Principal,
                                 now: datetime) -> list[int]:
    """Staff looked at meter ``meter_id`` (its purchase data, or the alarm's value) and say
    it holds purchase count ``meter_count`` (0-255, as the meter shows it): that becomes
    its count, its held write (if any) goes out again as the next count, issued by
    ``principal`` (``remote:purchase``, the meter in their scope, else FORBIDDEN /
    NOT_FOUND), and its ``purchase_mismatch`` alarm closes. Returns the commands queued."""
    if not principal.has(PURCHASE):
        raise Forbidden()
    if isinstance(meter_count, bool) or not 0 <= meter_count < WIRE_COUNTS:
        raise DomainError(f"购水次数须在 0 至 {WIRE_COUNTS - 1} 之间", f"The purchase count must be 0 to {WIRE_COUNTS - 1}",
                          field="purchaseCount", code=ErrorCode.INVALID)
    await service.meter_in_scope(session, meter_id=meter_id, principal=principal)
    await _locked_count(session, meter_id, now)
    await _set_count(session, meter_id, confirmed=meter_count, now=now)
    write = await pending.meter_write_on(session, meter_id)
    await close_cleared_alarms(session, subject_kind=AlarmSubjectKind.meter, kind=AlarmKind.purchase_mismatch,
                               subject_ids=[meter_id], now=now, by=principal.name[:100],
                               reason=f"水表购水次数核对为 {meter_count}")
    if write is None:
        return []
    last = await _command(session, write.command_id)
    if last is not None and last.state.value in _LIVE:
        return []  # on its way: the meter's reply decides
    await pending.release_meter_write(session, write_id=write.id, purchase_count=meter_count + 1)
    return await send_meter_writes(session, actor=principal, now=now, account_ids=[write.account_id],
                                   retry_after=timedelta(0))
