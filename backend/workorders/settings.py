"""Work orders' settings (``SHUIWU_WORKORDERS_…``), offered as the service
``settings.workorders``.

- ``SHUIWU_WORKORDERS_SLA``: JSON overriding the SLA of some categories, minutes to
  respond and to resolve, e.g. ``{"leak": [20, 180]}``; the others keep
  ``backend.workorders.service.DEFAULT_SLA``.
- ``SHUIWU_WORKORDERS_AUTO_CLOSE_DAYS``: a resolved order nobody confirmed is closed by
  the daily job after this many days (default 7).
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.workorders.models import WorkOrderCategory
from backend.workorders.sla import DEFAULT_SLA, SlaPolicy

MAX_SLA_MINUTES = 90 * 24 * 60


class WorkordersSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHUIWU_WORKORDERS_", extra="ignore", frozen=True)

    sla: dict[WorkOrderCategory, tuple[int, int]] = Field(default_factory=dict)
    auto_close_days: int = Field(default=7, ge=1, le=90)

    @field_validator("sla")
    @classmethod
    def _minutes(cls, value: dict[WorkOrderCategory, tuple[int, int]]) -> dict[WorkOrderCategory, tuple[int, int]]:
        for respond, resolve in value.values():
            if not 1 <= respond <= resolve <= MAX_SLA_MINUTES:
                raise ValueError(f"minutes to respond and to resolve: 1 ≤ respond ≤ resolve ≤ {MAX_SLA_MINUTES}")
        return value

    def policy(self) -> SlaPolicy:
        deadlines = dict(DEFAULT_SLA.deadlines)
        for category, (respond, resolve) in self.sla.items():
            deadlines[category] = (timedelta(minutes=respond), timedelta(minutes=resolve))
        return SlaPolicy(deadlines)

    @property
    def auto_close_after(self) -> timedelta:
        return timedelta(days=self.auto_close_days)
