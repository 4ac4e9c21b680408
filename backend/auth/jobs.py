"""Auth's scheduled work, run by the job worker with a :class:`backend.runtime.Runtime`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from backend.auth import service
from backend.db import transaction
from backend.runtime import Runtime

log = logging.getLogger(__name__)


async def purge_expired_auth(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """Delete expired login sessions and one-time codes; return how many rows went."""
    async with transaction(runtime.sessions) as session:
        purged = await service.purge_expired(session, now=runtime.now())
    log.info("purged %d expired auth rows", purged)
    return purged
