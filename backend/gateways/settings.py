"""What every gateway's settings group holds (``Gateway.settings`` subclasses it)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """The endpoint and the bounds of one gateway. A subclass sets its own env prefix
    (``SHUIWU_ALIPAY_``) and defaults, and adds its credentials as ``SecretStr`` fields:
    every ``SecretStr`` value is redacted from the exchanges kept."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Where the remote answers; the demo and the tests point it at the local fake.
    url: str = ""
    # The longest a call may take, waiting for a thread included; pass it to the SDK too
    # (requests' timeout), so a thread the caller gave up on ends as well.
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    # Threads of the gateway's own pool: how many calls run at once.
    pool_size: int = Field(default=4, ge=1, le=64)
    # Calls that may wait for a thread; one more is refused at once (GATEWAY_BUSY).
    queue_size: int = Field(default=16, ge=0, le=10_000)
