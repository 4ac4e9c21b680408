"""How long domain events are kept: ``SHUIWU_EVENT_RETENTION_DAYS`` (400), as far back as
a late handler can replay (``backend.events.replay``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import transaction
from backend.runtime import Runtime

log = logging.getLogger(__name__)


# Oldest first through ix_domain_events_created_at; relayed only, so an event the relay
# has not handed off yet (a relay down for the whole retention) is never lost unseen.
_PURGE = text(
    """
    DELETE FROM domain_events WHERE id IN (
        SELECT id FROM domain_events
        WHERE created_at < :older_than AND relayed_at IS NOT NULL
        ORDER BY created_at
        LIMIT :batch
    )
    """
)


async def purge_events(session: AsyncSession, *, older_than: datetime, batch: int = 10_000) -> int:
    """Delete up to ``batch`` relayed events created before ``older_than`` (oldest first),
    with their handled-records; returns how many went. The caller commits, and calls
    again while it returns ``batch`` (each call one short transaction).

    A job still queued for a purged event finds it gone and does nothing.
    """
    result = await session.execute(_PURGE, {"older_than": older_than, "batch": batch})
    return int(getattr(result, "rowcount", 0))


async def purge_expired_events(runtime: Runtime, payload: Mapping[str, Any] | None = None) -> int:
    """The scheduled purge: every relayed event older than the retention, a batch per
    transaction (a first purge of years of events never holds one long transaction);
    returns how many went."""
    older_than = runtime.now() - timedelta(days=runtime.settings.event_retention_days)
    purged = 0
    while True:
        async with transaction(runtime.sessions) as session:
            deleted = await purge_events(session, older_than=older_than)
        purged += deleted
        if deleted == 0:
            break
    log.info("purged %d domain events older than %s", purged, older_than.date())
    return purged
