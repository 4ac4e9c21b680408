"""Rebuild the resident app's CJK font: Noto Sans CJK SC Regular cut down to GB2312 (the
6,763 hanzi of everyday Chinese and its symbols), ASCII, Latin-1 (¥, ³, ×) and the
CJK / full-width punctuation, as WOFF2 (~2.5 MB).

Flet's web renderer draws no glyph it is not given and bundles no CJK font, so the app
ships this file (NOTES.md, "Flet 1.0.5 in the browser"). Needs Debian's
``fonts-noto-cjk`` and ``pip install fonttools brotli`` (the ``fonts`` extra); run with
``make resident-font`` or ``python resident_app/assets/fonts/build_font.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fontTools import subset

SOURCE = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
# The collection's fonts in order: JP, KR, SC, TC, HK; 2 is Simplified Chinese.
SC_FONT_NUMBER = 2
TARGET = Path(__file__).with_name("NotoSansSC-GB2312.woff2")


def gb2312_characters() -> str:
    """Every character GB2312 encodes (rows 0xA1-0xF7, cells 0xA1-0xFE)."""
    found = []
    for row in range(0xA1, 0xF8):
        for cell in range(0xA1, 0xFF):
            try:
                found.append(bytes((row, cell)).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return "".join(found)


def wanted_codepoints() -> set[int]:
    ranges = [
        (0x20, 0x7E),      # ASCII
        (0xA0, 0xFF),      # Latin-1: ¥ ³ × ·
        (0x2000, 0x206F),  # general punctuation: — … ‘ ’ “ ”
        (0x2190, 0x21FF),  # arrows
        (0x3000, 0x303F),  # CJK punctuation: 、 。 「 」 【 】
        (0xFF00, 0xFFEF),  # full-width forms: ， ： （ ） ￥
    ]
    points = {point for low, high in ranges for point in range(low, high + 1)}
    points.update(ord(character) for character in gb2312_characters())
    return points


def main() -> int:
    if not SOURCE.exists():
        print(f"missing {SOURCE}: apt-get install fonts-noto-cjk", file=sys.stderr)
        return 1
    options = subset.Options()
    options.flavor = "woff2"
    options.font_number = SC_FONT_NUMBER
    options.layout_features = ["*"]
    options.name_IDs = ["*"]
    options.notdef_outline = True
    font = subset.load_font(str(SOURCE), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=sorted(wanted_codepoints()))
    subsetter.subset(font)
    subset.save_font(font, str(TARGET), options)
    print(f"{TARGET} ({TARGET.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
