"""Receipt PDFs (reportlab): one page per receipt, on the layout's paper.

The text is set in one CJK **TrueType** font (``SHUIWU_PAYMENTS_RECEIPT_FONT``, Debian's
WenQuanYi Micro Hei by default): reportlab embeds TrueType outlines only (Noto Sans CJK
is CFF and is refused), and embeds the subset of glyphs a document uses, so a receipt
prints the same on any reader and any printer, whatever fonts it has. The font has no
bold face: bold is drawn as fill plus a thin stroke (text render mode 2), as printers'
drivers do.

Rendering is pure (values in, bytes out: no database, no clock) and CPU-bound; callers
on the event loop run it in a worker thread (:func:`render_receipts_async`).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from backend.payments.receipts.errors import ReceiptFontMissing
from backend.payments.receipts.layout import LayoutSpec

DEFAULT_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
MM = 72.0 / 25.4  # points per millimetre
# Guards reportlab's process-wide font registry while a font registers (once per process).
_lock = threading.Lock()
# Drawing takes no lock: each render has its own canvas, and a TrueType font keeps the
# glyphs a document uses per document. Saving does: it cuts the font's subsets with a
# parser (a read position) shared by every document, so only that short step is serial.
_subsetting = threading.Lock()
_registered: dict[tuple[str, int], str] = {}


@dataclass(frozen=True, slots=True)
class ReceiptFont:
    """A TrueType (or TrueType-collection) font file and the face to use in it."""

    path: Path = DEFAULT_FONT
    index: int = 0


@dataclass(frozen=True, slots=True)
class ReceiptContent:
    """What one receipt page says: each catalogue key's value (custom fields come from the
    layout) and its marks (退费, 补打, 已冲正)."""

    values: Mapping[str, str]
    marks: tuple[str, ...] = ()


def font_name(font: ReceiptFont) -> str:
    """Register ``font`` with reportlab once per process and return its name there;
    RECEIPT_FONT_MISSING when the file is missing or is no TrueType font."""
    key = (str(font.path), font.index)
    with _lock:
        name = _registered.get(key)
        if name is not None:
            return name
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFError, TTFont

        name = "Receipt-" + hashlib.sha1(f"{font.path}#{font.index}".encode()).hexdigest()[:10]
        try:
            pdfmetrics.registerFont(TTFont(name, str(font.path), subfontIndex=font.index))
        except (OSError, TTFError) as error:
            raise ReceiptFontMissing(field="font") from error
        _registered[key] = name
        return name


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
    with _subsetting:
        page.save()
    return output.getvalue()


async def render_receipts_async(layout: LayoutSpec, receipts: Sequence[ReceiptContent], *, font: ReceiptFont,
                                title: str = "收据") -> bytes:
    """:func:`render_receipts` in a worker thread (a batch of pages keeps the loop free)."""
    return await asyncio.to_thread(render_receipts, layout, receipts, font=font, title=title)


def _text(page: object, name: str, x_mm: float, y_mm: float, text: str, size: float, *, bold: bool = False,
          height: float, centre: bool = False) -> float:
    """Draw ``text`` with its baseline ``y_mm`` below the top edge; returns its width in mm."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    width = float(stringWidth(text, name, size))
    x = x_mm * MM - (width / 2 if centre else 0)
    # The render mode is graphics state that reportlab assumes unchanged between text
    # objects: a bold run is drawn inside q … Q so the next run is plain again.
    page.saveState()  # type: ignore[attr-defined]
    shown = page.beginText(x, (height - y_mm) * MM)  # type: ignore[attr-defined]
    shown.setFont(name, size)
    if bold:
        page.setLineWidth(size * 0.03)  # type: ignore[attr-defined]
        shown.setTextRenderMode(2)
    shown.textOut(text)
    page.drawText(shown)  # type: ignore[attr-defined]
    page.restoreState()  # type: ignore[attr-defined]
    return width / MM


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
