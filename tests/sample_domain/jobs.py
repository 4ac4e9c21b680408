"""The notes domain's scheduled job."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from backend.runtime import Runtime

TALLIES: list[tuple[str, int]] = []


async def tally(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """Count the operation log's notes entries, as the system actor."""
    async with runtime.sessions() as session:
        count = (await session.execute(text("SELECT count(*) FROM audit_log WHERE module = 'notes'"))).scalar_one()
    TALLIES.append((runtime.actor.name, count))
    return int(count)
