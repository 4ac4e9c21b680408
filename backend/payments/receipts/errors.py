"""Receipts' refusals: each a stable code with a Chinese and an English message."""

from __future__ import annotations

from backend.errors import DomainError, ErrorCode


class ReceiptLayoutInvalid(DomainError):
    """A layout breaks a rule (unknown field, offset outside the paper, size out of range);
    ``field`` names the part at fault (``fields[2].x``) and the message says which rule."""

    code = ErrorCode.RECEIPT_LAYOUT_INVALID
    message = "票据格式无效"
    message_en = "Invalid receipt layout"


class ReceiptFontMissing(DomainError):
    code = ErrorCode.RECEIPT_FONT_MISSING
    message = "票据字体文件不存在或无法读取 (SHUIWU_PAYMENTS_RECEIPT_FONT; Debian: fonts-wqy-microhei)"
    message_en = "The receipt font is missing or unreadable (SHUIWU_PAYMENTS_RECEIPT_FONT; Debian: fonts-wqy-microhei)"


class ReceiptFormVoid(DomainError):
    code = ErrorCode.RECEIPT_FORM_VOID
    message = "该票号已作废"
    message_en = "This form number was voided"


class ReceiptFormUsed(DomainError):
    code = ErrorCode.RECEIPT_FORM_USED
    message = "该票号已使用"
    message_en = "This form number was already used"


class ReceiptFormNotInStock(DomainError):
    code = ErrorCode.RECEIPT_FORM_NOT_IN_STOCK
    message = "该票号不在本人领用的票据中"
    message_en = "This form number is not in your issued stock"


class ReceiptFormsExhausted(DomainError):
    code = ErrorCode.RECEIPT_FORMS_EXHAUSTED
    message = "领用的票据已用完, 请先领用"
    message_en = "No unused form numbers left: have forms issued first"


class ReceiptFormsOverlap(DomainError):
    code = ErrorCode.RECEIPT_FORMS_OVERLAP
    message = "该号段与已领用的号段重叠"
    message_en = "This range overlaps a range already issued"
