"""The valve policy's settings (``SHUIWU_VALVE_*``). Read with
``backend.domain.read_settings(ValveSettings)``; once the handler is declared by a domain,
that domain's ``Domain.settings`` offers it as ``settings.<domain>``."""

from __future__ import annotations

from datetime import time

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ValveSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHUIWU_VALVE_", extra="ignore", frozen=True)

    # Off: no valve is closed automatically (a valve the policy closed still reopens).
    enabled: bool = True
    # No automatic close between these times of the utility's day (start > end spans
    # midnight; equal times: no quiet hours). Reopening is never held back.
    quiet_start: time = time(20, 0)
    quiet_end: time = time(8, 0)
    # A valve closes only after this many of the account's balance alerts (余额不足提醒,
    # 关阀预警) reached the resident by SMS or push since it last went into alert.
    min_delivered_alerts: int = Field(default=2, ge=0, le=20)
    # While fewer have been delivered and some are still on their way, look again after this.
    delivery_recheck_minutes: int = Field(default=60, ge=5, le=1440)
