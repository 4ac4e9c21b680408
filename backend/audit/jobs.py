"""The operation log's scheduled work (backend.audit.domain)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from backend.audit import service
from backend.audit.privacy import mask_logged_phones
from backend.db import transaction
from backend.runtime import Runtime

log = logging.getLogger(__name__)


async def purge_operation_log(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """Delete entries older than ``SHUIWU_AUDIT_RETENTION_DAYS`` and mask the mobile
    numbers of those older than ``SHUIWU_RETENTION_LOG_PHONES_DAYS``, a batch per
    transaction (a first run over years of log never holds one long transaction).
    Returns how many entries were deleted."""
    now = runtime.now()
    older_than = now - timedelta(days=runtime.settings.audit_retention_days)
    purged = 0
    while True:
        async with transaction(runtime.sessions) as session:
            deleted = await service.purge_operation_log(session, older_than=older_than)
        purged += deleted
        if deleted == 0:
            break
    log.info("purged %d operation-log entries older than %s", purged, older_than.date())
    masked = await mask_operation_log_phones(runtime, older_than=now - timedelta(days=runtime.settings.retention_log_phones_days))
    log.info("masked the phone numbers of %d operation-log entries", masked)
    return purged


async def mask_operation_log_phones(runtime: Runtime, *, older_than: datetime) -> int:
    """Mask every mobile number left in entries from before ``older_than``; return how
    many entries changed."""
    after_id, masked = 0, 0
    while True:
        async with transaction(runtime.sessions) as session:
            last_id, changed = await mask_logged_phones(session, older_than=older_than, after_id=after_id)
        masked += changed
        if last_id is None:
            return masked
        after_id = last_id
