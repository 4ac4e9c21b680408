"""Readings' scheduled work (backend.readings.domain)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from backend.db import transaction
from backend.readings.alarms import service as alarms_service
from backend.readings.partitions import ensure_partitions_ahead
from backend.runtime import Runtime

log = logging.getLogger(__name__)


async def evaluate_alarms(runtime: Runtime, payload: Mapping[str, Any]) -> alarms_service.AlarmEvaluation:
    """Evaluate the alarm rules for every installed meter (finds silent meters too)."""
    async with transaction(runtime.sessions) as session:
        result = await alarms_service.evaluate_alarms(session, actor=runtime.actor, now=runtime.now(), tz=runtime.timezone)
    log.info("alarms: %d opened, %d closed, %d still open", result.opened, result.closed, result.refreshed)
    return result


async def ensure_reading_partitions(runtime: Runtime, payload: Mapping[str, Any]) -> list[str]:
    """Attach the readings partitions of this month and the next three ahead of need."""
    async with transaction(runtime.sessions) as session:
        attached = await ensure_partitions_ahead(session, now=runtime.now(), tz=runtime.timezone)
    log.info("readings partitions attached: %s", ", ".join(attached) or "none needed")
    return attached
