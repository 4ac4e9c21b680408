"""Response and resolution deadlines per category (docs/workorders.md, "SLA"); a light
module, read by the domain's settings group at declaration time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from backend.workorders.models import WorkOrderCategory


@dataclass(frozen=True, slots=True)
class SlaPolicy:
    """Response and resolution deadlines per category (the defaults below; a deployment
    overrides them with ``SHUIWU_WORKORDERS_SLA``, backend.workorders.settings)."""

    deadlines: Mapping[WorkOrderCategory, tuple[timedelta, timedelta]]

    def due(self, category: WorkOrderCategory, created_at: datetime) -> tuple[datetime, datetime]:
        respond, resolve = self.deadlines[category]
        return created_at + respond, created_at + resolve


_M, _H = timedelta(minutes=1), timedelta(hours=1)
DEFAULT_SLA = SlaPolicy({
    WorkOrderCategory.leak: (30 * _M, 4 * _H),
    WorkOrderCategory.no_water: (30 * _M, 4 * _H),
    WorkOrderCategory.meter_fault: (2 * _H, 24 * _H),
    WorkOrderCategory.water_quality: (1 * _H, 24 * _H),
    WorkOrderCategory.billing_query: (4 * _H, 48 * _H),
    WorkOrderCategory.other: (4 * _H, 72 * _H),
})

