"""Billing's settings (``SHUIWU_BILLING_…``), offered as the service ``settings.billing``:
what the printed bill notices (缴费通知单 / 催缴单) say about the utility, and their font."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.exports.pdf import DEFAULT_FONT, PdfFont


class BillingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHUIWU_BILLING_", extra="ignore", frozen=True)

    # The CJK TrueType font notices embed (a .ttf, or a .ttc with the face's index), as
    # receipts do: Debian's fonts-wqy-microhei by default.
    notice_font: Path = DEFAULT_FONT
    notice_font_index: int = Field(default=0, ge=0, le=64)
    # Who the notices come from, and how a household pays and asks (printed on every notice).
    utility_name: str = Field(default="自来水公司", min_length=1, max_length=40)
    service_phone: str = Field(default="", max_length=40)
    payment_methods: str = Field(
        default="营业厅柜台 (现金 / 刷卡)、支付宝或微信 (生活缴费 → 水费, 输入缴费号)、银行代扣", max_length=200)
    # A 催缴单 asks for payment within this many days of delivery.
    reminder_days: int = Field(default=7, ge=1, le=90)

    @property
    def font(self) -> PdfFont:
        return PdfFont(self.notice_font, self.notice_font_index)
