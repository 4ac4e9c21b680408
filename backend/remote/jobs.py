"""The remote domain's minute jobs (PgQueuer cron schedules, ``backend.remote.domain``):

- ``enqueue_due_patrols``: the patrol runs due this minute and their read commands
  (``backend.remote.patrols``);
- ``sweep_remote_commands``: commands past their time limit become ``timed_out``, and
  those a dead worker held go back to the queue (``backend.remote.service``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from backend.remote import patrols, service

if TYPE_CHECKING:
    from backend.runtime import Runtime


async def enqueue_due_patrols_job(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    async with runtime.sessions() as session, session.begin():
        runs = await patrols.enqueue_due_patrols(session, now=runtime.now(), tz=runtime.tz, actor=runtime.actor)
    return len(runs)


async def sweep_commands_job(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    async with runtime.sessions() as session, session.begin():
        swept = await service.sweep_commands(session, now=runtime.now())
    return len(swept.timed_out) + len(swept.requeued) + len(swept.failed)
