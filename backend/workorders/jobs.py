"""The daily job ``close_unconfirmed_work_orders``: a resolved order nobody confirmed
within ``SHUIWU_WORKORDERS_AUTO_CLOSE_DAYS`` is closed by the system, 500 a transaction
(docs/workorders.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from backend.workorders.service import close_unconfirmed

if TYPE_CHECKING:
    from backend.runtime import Runtime

BATCH = 500


async def close_unconfirmed_job(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    from backend.workorders.settings import WorkordersSettings

    settings: WorkordersSettings = runtime.settings_group("workorders")
    closed = 0
    while True:
        async with runtime.sessions() as session, session.begin():
            ids = await close_unconfirmed(session, now=runtime.now(), after=settings.auto_close_after, batch=BATCH)
        closed += len(ids)
        if len(ids) < BATCH:
            return closed
