"""PDF pieces shared by the domains' printed papers (payments' receipts, billing's bill
notices), drawn with reportlab.

The text is set in one CJK **TrueType** font (Debian's WenQuanYi Micro Hei by default):
reportlab embeds TrueType outlines only (Noto Sans CJK is CFF and is refused), and embeds
the subset of glyphs a document uses, so a paper prints the same on any reader and any
printer, whatever fonts it has. The font has no bold face: bold is drawn as fill plus a
thin stroke (text render mode 2), as printers' drivers do.

A font registers once per process (:func:`register_font`). Drawing takes no lock: each
document has its own canvas, and a TrueType font keeps the glyphs a document uses per
document. Saving does (:data:`SUBSETTING`): it cuts the font's subsets with a parser (a
read position) shared by every document using that font, so only that short step is
serial, whichever domain's paper is being saved.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_FONT", "MM", "SUBSETTING", "FontUnavailable", "PdfFont", "draw_text", "register_font"]

DEFAULT_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
MM = 72.0 / 25.4  # points per millimetre
SUBSETTING = threading.Lock()
# Guards reportlab's process-wide font registry while a font registers (once per process).
_registering = threading.Lock()
_registered: dict[tuple[str, int], str] = {}


@dataclass(frozen=True, slots=True)
class PdfFont:
    """A TrueType (or TrueType-collection) font file and the face to use in it."""

    path: Path = DEFAULT_FONT
    index: int = 0


class FontUnavailable(Exception):
    """The font file is missing or is no TrueType font; each caller answers with its own
    typed refusal (which setting names the font differs)."""


def register_font(font: PdfFont) -> str:
    """Register ``font`` with reportlab once per process and return its name there;
    :class:`FontUnavailable` when the file is missing or is no TrueType font."""
    key = (str(font.path), font.index)
    with _registering:
        name = _registered.get(key)
        if name is not None:
            return name
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFError, TTFont

        name = "Font-" + hashlib.sha1(f"{font.path}#{font.index}".encode()).hexdigest()[:10]
        try:
            pdfmetrics.registerFont(TTFont(name, str(font.path), subfontIndex=font.index))
        except (OSError, TTFError) as error:
            raise FontUnavailable(str(font.path)) from error
        _registered[key] = name
        return name


def draw_text(page: object, name: str, x_mm: float, y_mm: float, text: str, size: float, *, bold: bool = False,
              height: float, centre: bool = False, right: bool = False) -> float:
    """Draw ``text`` with its baseline ``y_mm`` below the top edge of a page ``height`` mm
    high, starting at ``x_mm`` (centred on it, or ending at it); returns its width in mm."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    width = float(stringWidth(text, name, size))
    x = x_mm * MM - (width / 2 if centre else width if right else 0)
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
