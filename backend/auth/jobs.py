"""Auth's scheduled work, run by the job worker with a :class:`backend.runtime.Runtime`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from backend.auth import service
from backend.db import transaction
from backend.runtime import Runtime

log = logging.getLogger(__name__)


async def purge_expired_auth(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """Delete expired login sessions and one-time codes (kept
    ``SHUIWU_RETENTION_LOGIN_CODES_DAYS`` after use or expiry), and binding requests
    refused or ended ``SHUIWU_RETENTION_BINDINGS_DAYS`` ago, a batch per transaction;
    return how many rows went."""
    now = runtime.now()
    async with transaction(runtime.sessions) as session:
        purged = await service.purge_expired(
            session, now=now, codes_kept=timedelta(days=runtime.settings.retention_login_codes_days))
    decided_before = now - timedelta(days=runtime.settings.retention_bindings_days)
    bindings = 0
    while True:
        async with transaction(runtime.sessions) as session:
            deleted = await service.purge_decided_bindings(session, decided_before=decided_before)
        bindings += deleted
        if deleted == 0:
            break
    log.info("purged %d expired auth rows and %d decided binding requests", purged, bindings)
    return purged + bindings
