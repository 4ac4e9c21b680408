"""Receipt PDFs (reportlab): one page per receipt, on the layout's paper.

The text is set in one CJK TrueType font (``SHUIWU_PAYMENTS_RECEIPT_FONT``, Debian's
WenQuanYi Micro Hei by default), registered, drawn and subset as every printed paper is
(:mod:`backend.exports.pdf`, which says why TrueType and why saving is serial).

Rendering is pure (values in, bytes out: no database, no clock) and CPU-bound; callers
on the event loop run it in a worker thread (:func:`render_receipts_async`).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backend.exports.pdf import DEFAULT_FONT, MM, SUBSETTING, FontUnavailable, PdfFont, register_font
from backend.exports.pdf import draw_text as _text
from backend.payments.receipts.errors import ReceiptFontMissing
from backend.payments.receipts.layout import LayoutSpec

__all__ = ["DEFAULT_FONT", "ReceiptContent", "ReceiptFont", "font_name", "render_receipts", "render_receipts_async"]

# A receipt's font is any printed paper's font (the name stays for payments' settings).
ReceiptFont = PdfFont


@dataclass(frozen=True, slots=True)
class ReceiptContent:
    """What one receipt page says: each catalogue key's value (custom fields come from the
    layout) and its marks (退费, 补打, 已冲正)."""

    values: Mapping[str, str]
    marks: tuple[str, ...] = ()


def font_name(font: ReceiptFont) -> str:
    """Register ``font`` with reportlab once per process and return its name there;
    RECEIPT_FONT_MISSING when the file is missing or is no TrueType font."""
    try:
        return register_font(font)
    except FontUnavailable as error:
        raise ReceiptFontMissing(field="font") from error


def render_receipts(layout: LayoutSpec, receipts: Sequence[ReceiptContent], *, font: ReceiptFont,
                    title: str = "收据") -> bytes:
    """The PDF of ``receipts`` on ``layout``, one page each (module docstring)."""
    from reportlab.pdfgen import canvas

    name = font_name(font)
    output = io.BytesIO()
    page = canvas.Canvas(output, pagesize=(layout.width * MM, layout.height * MM), pageCompression=1, invariant=True)
    page.setTitle(title)
    page.setCreator("shuiwu")
    for receipt in receipts:
        _draw(page, layout, receipt, name)
        page.showPage()
    with SUBSETTING:
        page.save()
    return output.getvalue()


async def render_receipts_async(layout: LayoutSpec, receipts: Sequence[ReceiptContent], *, font: ReceiptFont,
                                title: str = "收据") -> bytes:
    """:func:`render_receipts` in a worker thread (a batch of pages keeps the loop free)."""
    return await asyncio.to_thread(render_receipts, layout, receipts, font=font, title=title)


def _draw(page: object, layout: LayoutSpec, receipt: ReceiptContent, name: str) -> None:
    height, margins = layout.height, layout.margins
    marks = "  ".join(receipt.marks)
    if not layout.preprinted:
        if layout.header:
            _text(page, name, layout.width / 2, margins.top + layout.header_size / MM, layout.header,
                  layout.header_size, bold=True, height=height, centre=True)
        if layout.footer:
            _text(page, name, margins.left, height - margins.bottom, layout.footer, 9, height=height)
        if layout.ruled:
            _rules(page, layout)
    for placement in layout.fields:
        if placement.key.startswith("custom:"):
            value = placement.text
        elif placement.key == "mark":
            value = marks
        else:
            value = receipt.values.get(placement.key, "")
        x = placement.x
        if not layout.preprinted and placement.shown_label:
            label = f"{placement.shown_label}："
            x += _text(page, name, x, placement.y, label, placement.font_size, height=height) + 0.5
        if value:
            _text(page, name, x, placement.y, value, placement.font_size, bold=placement.bold, height=height)
    if marks and not layout.has("mark"):
        # A reprint or a refund must never pass for an original payment receipt.
        corner_x = layout.width - margins.right - 20
        _text(page, name, corner_x, margins.top + 5, marks, 12, bold=True, height=height)


def _rules(page: object, layout: LayoutSpec) -> None:
    """A ruled table on blank paper: a frame around the fields' rows, a line under each."""
    rows = sorted({placement.y for placement in layout.fields if placement.key != "mark"})
    if not rows:
        return
    left, right = layout.margins.left, layout.width - layout.margins.right
    gap = 2.5  # mm between a baseline and the rule under it
    top = rows[0] - (rows[1] - rows[0] if len(rows) > 1 else 8) + gap
    page.setLineWidth(0.6)  # type: ignore[attr-defined]
    page.rect(left * MM, (layout.height - rows[-1] - gap) * MM, (right - left) * MM,  # type: ignore[attr-defined]
              (rows[-1] - top) * MM)
    page.setLineWidth(0.3)  # type: ignore[attr-defined]
    for y in rows[:-1]:
        page.line(left * MM, (layout.height - y - gap) * MM, right * MM, (layout.height - y - gap) * MM)  # type: ignore[attr-defined]
    page.setLineWidth(1)  # type: ignore[attr-defined]
