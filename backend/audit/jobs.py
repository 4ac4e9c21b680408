"""The operation log's scheduled work (backend.audit.domain)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from backend.audit import service
from backend.db import transaction
from backend.runtime import Runtime

log = logging.getLogger(__name__)


async def purge_operation_log(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """Delete entries older than ``SHUIWU_AUDIT_RETENTION_DAYS``, a batch per transaction
    (a first purge of years of log never holds one long transaction)."""
    older_than = runtime.now() - timedelta(days=runtime.settings.audit_retention_days)
    purged = 0
    while True:
        async with transaction(runtime.sessions) as session:
            deleted = await service.purge_operation_log(session, older_than=older_than)
        purged += deleted
        if deleted == 0:
            break
    log.info("purged %d operation-log entries older than %s", purged, older_than.date())
    return purged
