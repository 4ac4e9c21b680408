"""Receipts' line in ``shuiwu check`` (backend.payments.domain)."""

from __future__ import annotations

from backend.domain import CheckResult
from backend.errors import DomainError
from backend.payments.receipts.render import font_name
from backend.runtime import Runtime


async def receipt_font(runtime: Runtime) -> CheckResult:
    """The receipt font (``SHUIWU_PAYMENTS_RECEIPT_FONT``) exists and is a TrueType face
    reportlab can embed: without it no receipt prints."""
    settings = runtime.settings_group("payments")
    try:
        font_name(settings.font)
    except DomainError:
        return CheckResult(False, f"{settings.receipt_font} (face {settings.receipt_font_index}) is missing or not a "
                                  "TrueType font: install Debian's fonts-wqy-microhei or set SHUIWU_PAYMENTS_RECEIPT_FONT")
    return CheckResult(True, f"{settings.receipt_font} (face {settings.receipt_font_index})")
