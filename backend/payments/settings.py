"""Payments' settings (``SHUIWU_PAYMENTS_…``), offered as the service ``settings.payments``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.payments.counter import DEFAULT_MAX_COUNTER_PAYMENT_FEN
from backend.payments.online.counter_online import DEFAULT_DEADLINE_S, DEFAULT_POLL_S
from backend.payments.receipts.render import DEFAULT_FONT, ReceiptFont


class PaymentsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHUIWU_PAYMENTS_", extra="ignore", frozen=True)

    # The largest single counter payment in fen (¥50,000): a typo of two zeros is refused.
    max_counter_payment_fen: int = Field(default=DEFAULT_MAX_COUNTER_PAYMENT_FEN, gt=0, le=10**10)
    # The CJK TrueType font receipts embed (a .ttf, or a .ttc with the face's index):
    # Debian's fonts-wqy-microhei, which `make install` installs. CFF fonts (Noto Sans CJK)
    # cannot be embedded by reportlab. `shuiwu check` says when it is missing.
    receipt_font: Path = DEFAULT_FONT
    receipt_font_index: int = Field(default=0, ge=0, le=64)
    # The merchants file (SHUIWU_PAYMENTS_CONFIG, TOML: backend.payments.online.merchants):
    # Alipay apps, WeChat Pay merchants, the public base URL the platforms call back. Absent:
    # online payment is off. Read and validated at start (a mistake stops the process with
    # one line per mistake) and by `shuiwu check` (payments.merchants).
    config: Path | None = None
    # Counter barcode pay (付款码): while the payer confirms on their phone the gateway is
    # asked every `barcode_poll_s` seconds, and after `barcode_deadline_s` the payment is
    # cancelled at the gateway (PAYMENT_DECLINED). The platforms suggest polling every few
    # seconds for up to about a minute.
    barcode_poll_s: float = Field(default=DEFAULT_POLL_S, ge=0.05, le=30)
    barcode_deadline_s: float = Field(default=DEFAULT_DEADLINE_S, ge=1, le=300)

    @property
    def font(self) -> ReceiptFont:
        return ReceiptFont(self.receipt_font, self.receipt_font_index)
