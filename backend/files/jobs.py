"""The files layer's scheduled work (backend.files.domain)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from backend.files.service import FileStore
from backend.runtime import Runtime

log = logging.getLogger(__name__)


async def purge_expired_files(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """Delete the stored files past their expiry (bytes and rows), and what crashed
    writers left in the staging directory."""
    files: FileStore = runtime.service("files")
    purged = await files.purge(runtime.sessions, now=runtime.now())
    log.info("purged %d expired stored files", purged)
    return purged
