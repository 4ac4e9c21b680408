"""The valve policy's demo step: the valves the policy closed, as history.

The demo's master-station prepaid accounts standing at their close line (billing's
history leaves two, one vulnerable) had their valves closed by the policy when they ran
out, unless vulnerable: the step records that close as a succeeded ``valve_close`` of
the system (系统) for each such household's valve meters, at the demo's ``now``. So a
recharge at the counter in the running demo moves the account back to normal and the
policy reopens the valve (``backend.valves.handlers``); on the simulated bus
(``backend.remote.demo``) the simulator's valve opens. A household whose meters already
have a valve command is left as it is, so a second load changes nothing.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.domain import DemoPlan
from backend.remote import service
from backend.remote.handlers import AUTOMATIC_WAIT_S
from backend.remote.models import CommandKind

# Batch ids of the demo's history closes: uuid5 of the account in this namespace.
_DEMO_BATCHES = uuid.UUID("6d1f0c2e-5a7b-4e39-8c4d-2f9e7b1a0c55")

_AT_CLOSE_LINE = text("""
SELECT id, household_id FROM accounts
WHERE status = 'open' AND mode = 'prepaid_station' AND alert_state = 'close' AND NOT vulnerable
ORDER BY id
""")
_SUCCEEDED = text("""
UPDATE remote_commands SET state = 'succeeded', attempts = 1, sent_at = :now, finished_at = :now, updated_at = :now,
       reply = CAST('{"valve": "closed", "battery_low": false}' AS jsonb)
WHERE id = ANY(:ids)
""")


async def demo_step(session: AsyncSession, plan: DemoPlan) -> None:
    for account in (await session.execute(_AT_CLOSE_LINE)).all():
        meters = await service.valve_meters_of_household(session, account.household_id)
        if not meters or (await session.execute(text(
                "SELECT 1 FROM remote_commands WHERE meter_id = ANY(:meters) AND kind IN ('valve_open', 'valve_close') "
                "LIMIT 1"), {"meters": meters})).first() is not None:
            continue
        plan.progress("关阀策略")
        batch = await service.queue_commands(
            session, selection=service.Selection(meter_ids=tuple(meters)), kind=CommandKind.valve_close, params={},
            issued_by=plan.actor, time_limit_s=None, wait_s=AUTOMATIC_WAIT_S, now=plan.now,
            batch_id=uuid.uuid5(_DEMO_BATCHES, str(account.id)))
        await session.execute(_SUCCEEDED, {"ids": list(batch.command_ids), "now": plan.now})
