"""The handler of ``account.closed`` (``remote.close_valves``, payments' event): a closed
account's household gets its valve meters closed, as the system actor (系统 in the
operation log and on the commands).

It acts on the current state when it runs (DESIGN.md "Events"): nothing when the
household has an open account again; only the meters serving it now that have a valve
and a link (a meter without a valve has nothing to close). The batch id is derived from
the event, so a handler run twice for one event (a retry after a crash between queueing
and marking the event handled) queues nothing twice.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.accounts import account_of_household
from backend.events.service import Event, payload_of
from backend.payments.events import AccountClosed
from backend.remote import service
from backend.remote.models import CommandKind

if TYPE_CHECKING:
    from backend.runtime import Runtime

# An automatic close may wait for a worker this long (a desk's 30 s would lose it to a
# worker restarting at that moment; the event is not handled twice).
AUTOMATIC_WAIT_S = 3600
# Batch ids of handler-made batches: uuid5 of the event in this namespace.
_BATCHES = uuid.UUID("6f1d3c52-7a0b-4c1e-9d55-3b7a9e0c2f41")


async def close_valves_of_closed_account(runtime: Runtime, session: AsyncSession, event: Event) -> list[int]:
    """Queue a valve_close for each valve meter of the closed account's household
    (module docstring); returns the commands queued."""
    closed = payload_of(event, AccountClosed)
    if await account_of_household(session, closed.household_id) is not None:
        return []  # reopened since: its valves stay as they are
    batch_id = uuid.uuid5(_BATCHES, f"account.closed:{event.id}")
    if (await session.execute(text("SELECT 1 FROM remote_commands WHERE batch_id = :batch LIMIT 1"),
                              {"batch": batch_id})).first() is not None:
        return []
    meter_ids = await service.valve_meters_of_household(session, closed.household_id)
    if not meter_ids:
        return []
    selection = service.Selection(meter_ids=tuple(meter_ids))
    batch = await service.queue_commands(
        session, selection=selection, kind=CommandKind.valve_close, params={},
        issued_by=runtime.actor, time_limit_s=None, wait_s=AUTOMATIC_WAIT_S, now=runtime.now(), batch_id=batch_id)
    return batch.command_ids
