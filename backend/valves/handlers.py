"""The valve policy at work: the handler of ``account.threshold_crossed`` (billing's
event, in either direction) and the job that looks again when the policy said "later".

Both act on the account's state when they run (DESIGN.md "Events"): the policy
(:mod:`backend.valves.policy`) decides from the account's alert state now, the alerts
that reached the resident, the working days and the quiet hours. ``close_now`` queues a
``valve_close`` for the household's valve meters that have a link, ``open_now`` a
``valve_open`` (only for a valve the policy closed), ``retry`` defers
``recheck_valve_policy`` to the time it names, ``never`` does nothing. Commands are the
system actor's (系统 in the operation log and on the commands) and wait up to an hour for
a worker, like every automatic command.

"The policy closed it" is read from the commands: the newest valve command of the
household's valve meters is the system's ``valve_close`` and did not fail. A batch id is
derived from the event (or the recheck's time), so a handler or job run twice for one
cause queues nothing twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.events import AccountThresholdCrossed
from backend.billing.models import AlertState
from backend.events.service import Event, payload_of
from backend.remote import service
from backend.remote.handlers import AUTOMATIC_WAIT_S
from backend.remote.models import CommandKind
from backend.valves.inputs import valve_decision
from backend.valves.policy import ValveAction, ValveDecision, ValvePolicy

if TYPE_CHECKING:
    from backend.runtime import Runtime

log = logging.getLogger(__name__)

RECHECK_JOB = "recheck_valve_policy"
# Batch ids of the policy's batches: uuid5 of their cause in this namespace.
_BATCHES = uuid.UUID("2b8f5a64-0d3e-4c71-a9f2-6e1c7d9b3a50")

_LAST_VALVE_COMMAND = text("""
SELECT kind, issued_by_kind, state FROM remote_commands
WHERE meter_id = ANY(:meters) AND kind IN ('valve_open', 'valve_close')
ORDER BY id DESC LIMIT 1
""")


async def apply_valve_policy(runtime: Runtime, session: AsyncSession, event: Event) -> list[int]:
    """The policy for each account of the event; returns the commands queued."""
    crossed = payload_of(event, AccountThresholdCrossed)
    queued: list[int] = []
    for account_id, household_id in zip(crossed.account_ids, crossed.household_ids, strict=True):
        queued.extend(await _apply(runtime, session, account_id=account_id, household_id=household_id,
                                   cause=f"event:{event.id}", closing=crossed.to_state is AlertState.close))
    return queued


async def recheck_valve_policy(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """The deferred look again (``retry``): the same decision on the state now."""
    async with runtime.sessions() as session, session.begin():
        queued = await _apply(runtime, session, account_id=int(payload["account_id"]),
                              household_id=int(payload["household_id"]), cause=f"recheck:{payload['at']}")
    return len(queued)


async def closed_by_policy(session: AsyncSession, meter_ids: Sequence[int]) -> bool:
    """Whether the newest valve command of these meters is the system's close that has
    not failed (queued, on its way, or done)."""
    row = (await session.execute(_LAST_VALVE_COMMAND, {"meters": list(meter_ids)})).first()
    return row is not None and row.kind == "valve_close" and row.issued_by_kind == "system" and \
        row.state not in ("failed", "timed_out")


async def _apply(runtime: Runtime, session: AsyncSession, *, account_id: int, household_id: int,
                 cause: str, closing: bool = True) -> list[int]:
    meters = await service.valve_meters_of_household(session, household_id)
    if not meters:
        return []  # nothing to open or close: messages are the other domains' business
    policy_closed = await closed_by_policy(session, meters)
    if not closing and not policy_closed:
        # A move to normal or alert only ever reopens what the policy closed: most of a
        # settlement's crossings end here, two index reads each.
        return []
    now = runtime.now()
    policy = ValvePolicy.from_settings(runtime.settings_group("valves"))
    decision = await valve_decision(session, account_id=account_id, household_id=household_id,
                                    closed_by_policy=policy_closed, policy=policy, now=now, tz=runtime.tz)
    log.info("valve policy for account %s: %s (%s)", account_id, decision.action.value, decision.message_en)
    if decision.action is ValveAction.retry:
        await _defer(runtime, session, account_id=account_id, household_id=household_id, decision=decision)
        return []
    if decision.action is ValveAction.never:
        return []
    kind = CommandKind.valve_close if decision.action is ValveAction.close_now else CommandKind.valve_open
    batch_id = uuid.uuid5(_BATCHES, f"{kind.value}:{account_id}:{cause}")
    if (await session.execute(text("SELECT 1 FROM remote_commands WHERE batch_id = :batch LIMIT 1"),
                              {"batch": batch_id})).first() is not None:
        return []
    batch = await service.queue_commands(
        session, selection=service.Selection(meter_ids=tuple(meters)), kind=kind, params={},
        issued_by=runtime.actor, time_limit_s=None, wait_s=AUTOMATIC_WAIT_S, now=now, batch_id=batch_id)
    return list(batch.command_ids)


async def _defer(runtime: Runtime, session: AsyncSession, *, account_id: int, household_id: int,
                 decision: ValveDecision) -> None:
    assert decision.retry_at is not None
    at = decision.retry_at.isoformat()
    await runtime.defer(session, job=RECHECK_JOB, dedupe_key=f"{account_id}:{at}", at=decision.retry_at,
                        payload={"account_id": account_id, "household_id": household_id, "at": at})
