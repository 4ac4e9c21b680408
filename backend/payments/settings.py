"""Payments' settings (``SHUIWU_PAYMENTS_…``), offered as the service ``settings.payments``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.payments.counter import DEFAULT_MAX_COUNTER_PAYMENT_FEN


class PaymentsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHUIWU_PAYMENTS_", extra="ignore", frozen=True)

    # The largest single counter payment in fen (¥50,000): a typo of two zeros is refused.
    max_counter_payment_fen: int = Field(default=DEFAULT_MAX_COUNTER_PAYMENT_FEN, gt=0, le=10**10)
