"""The notes domain's settings group (``SHUIWU_NOTES_*``) and its echo gateway's
(``SHUIWU_ECHO_*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.gateways.settings import GatewaySettings


class NotesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHUIWU_NOTES_", extra="ignore", frozen=True)

    # A note longer than this is cut (a field note, not a report).
    max_chars: int = Field(default=200, ge=1, le=2000)


class EchoSettings(GatewaySettings):
    """The echo gateway (tests/sample_domain/echo.py): small bounds, so tests fill them."""

    model_config = SettingsConfigDict(env_prefix="SHUIWU_ECHO_", extra="ignore", frozen=True)

    url: str = "http://127.0.0.1:18911"
    app: str = "notes"
    secret: SecretStr = SecretStr("echo-shared-secret-0001")
    timeout_s: float = Field(default=2.0, gt=0, le=300)
    pool_size: int = Field(default=2, ge=1, le=64)
    queue_size: int = Field(default=2, ge=0, le=10_000)
