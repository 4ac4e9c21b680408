"""Reading receipt PDFs back in tests: each text run with where it sits on the paper."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from pypdf import PdfReader

MM = 72.0 / 25.4


@dataclass(frozen=True)
class Run:
    """A text run: its text, ``x`` from the left edge and ``y`` from the top edge down to
    its baseline, both in mm."""

    text: str
    x: float
    y: float


def pages(pdf: bytes) -> int:
    return len(PdfReader(io.BytesIO(pdf)).pages)


def text_runs(pdf: bytes, page: int = 0) -> list[Run]:
    reader = PdfReader(io.BytesIO(pdf))
    sheet = reader.pages[page]
    height = float(sheet.mediabox.height)
    runs: list[Run] = []

    def visit(text: str, cm: list[float], tm: list[float], font: Any, size: Any) -> None:
        if not text.strip():
            return
        x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
        y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
        runs.append(Run(text.strip(), round(x / MM, 2), round((height - y) / MM, 2)))

    sheet.extract_text(visitor_text=visit)
    return runs


def run_at(runs: list[Run], x: float, y: float, tolerance: float = 1.0) -> Run | None:
    near = [run for run in runs if abs(run.x - x) <= tolerance and abs(run.y - y) <= tolerance]
    return near[0] if len(near) == 1 else None


def embedded_fonts(pdf: bytes) -> dict[str, bool]:
    """Each font of the document by its base name, and whether its program (FontFile2, a
    TrueType outline) is embedded in the file."""
    reader = PdfReader(io.BytesIO(pdf))
    found: dict[str, bool] = {}
    for sheet in reader.pages:
        fonts = sheet["/Resources"].get_object().get("/Font", {})
        for reference in fonts.values():
            font = reference.get_object()
            descriptor = font.get("/FontDescriptor")
            if descriptor is None and "/DescendantFonts" in font:
                descriptor = font["/DescendantFonts"][0].get_object().get("/FontDescriptor")
            descriptor = descriptor.get_object() if descriptor is not None else {}
            found[str(font["/BaseFont"])] = "/FontFile2" in descriptor
    return found
