"""The exports layer's scheduled work (backend.exports.domain)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from backend.db import transaction
from backend.exports.links import purge_used_download_links
from backend.runtime import Runtime

log = logging.getLogger(__name__)


async def purge_used_links(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """Forget the nonces of used download links that have expired anyway."""
    async with transaction(runtime.sessions) as session:
        purged = await purge_used_download_links(session, now=runtime.now())
    log.info("purged %d used download links", purged)
    return purged
