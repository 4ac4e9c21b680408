"""The daily job ``close_unconfirmed_work_orders``: a resolved order nobody confirmed
within :data:`AUTO_CLOSE_AFTER` is closed by the system (docs/workorders.md)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from backend.workorders.service import close_unconfirmed

if TYPE_CHECKING:
    from backend.runtime import Runtime

AUTO_CLOSE_AFTER = timedelta(days=7)


async def close_unconfirmed_job(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    closed = 0
    while True:
        async with runtime.sessions() as session, session.begin():
            ids = await close_unconfirmed(session, now=runtime.now(), after=AUTO_CLOSE_AFTER)
        closed += len(ids)
        if len(ids) < 500:
            return closed
