"""The webhooks settings group (env prefix ``SHUIWU_WEBHOOK_``), offered as the service
``settings.webhooks``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WebhookSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHUIWU_WEBHOOK_", extra="ignore")

    # Deliveries to loopback, private, link-local, CGNAT and metadata addresses are refused
    # unless this is true (tests and the demo, whose receivers run on this machine).
    allow_private: bool = False
    # One attempt's bound: connect + send + the answer (only its first bytes are read).
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    # Attempts per delivery before it is failed (a replay starts a new series).
    max_attempts: int = Field(default=8, ge=1, le=20)
    # Attempt n+1 waits backoff_base_s * 2**(n-1) after attempt n failed, at most backoff_max_s.
    backoff_base_s: float = Field(default=30.0, ge=0)
    backoff_max_s: float = Field(default=3600.0, ge=0)
    # Requests in flight at once per job worker process.
    concurrency: int = Field(default=16, ge=1, le=256)
