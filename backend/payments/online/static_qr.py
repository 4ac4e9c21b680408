"""Static QR stickers (静态码, issue 18 item 4): one QR per household, stuck on its meter
box, that anyone scans to top up or pay the household.

The QR holds ``{public_base_url}/pay/s/{token}`` (the token: :func:`backend.payments.online.pages.static_qr_token`,
an HMAC of the household id under the server's secret key), which opens the landing page
where the payer enters an amount and pays like a dynamic order (JSAPI inside WeChat, WAP
inside Alipay). Nothing is stored per sticker: a household's sticker is the same every
time it is printed, and rotating ``SHUIWU_SECRET_KEY`` voids them all.

- :func:`qr_matrix` / :func:`qr_png` / :func:`qr_svg`: one household's QR (error
  correction M, a 4-module quiet zone), drawn with reportlab's encoder (no other QR
  library), PNG through Pillow, SVG as one path.
- :func:`sticker_households` / :func:`render_sticker_sheet`: the printable sheet of an
  area (a building, or a community: each building starts a new page), A4 portrait, 3 × 4
  stickers of 62 × 66 mm with cut lines, each with the QR, the 户号, the masked address
  and "扫码缴水费"; the text in the receipts' TrueType CJK font (:mod:`backend.exports.pdf`).
  At most :data:`MAX_STICKERS` at once (TOO_MANY_ROWS): choose a smaller area.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.service.rooms import area_name_sql, room_label_sql, unit_name_sql
from backend.billing.scope import area_path_in_scope, patterns_param
from backend.errors import DomainError, ErrorCode, NotFound
from backend.exports.pdf import MM, SUBSETTING, FontUnavailable, PdfFont, draw_text, register_font
from backend.payments.online.pages import mask_address, static_qr_token

__all__ = [
    "MAX_STICKERS",
    "Sticker",
    "StickerFontMissing",
    "TooManyStickers",
    "household_in_scope",
    "household_sticker",
    "qr_matrix",
    "qr_png",
    "qr_svg",
    "render_sticker_sheet",
    "render_sticker_sheet_async",
    "static_qr_url",
    "sticker_households",
]

MAX_STICKERS = 3000  # a large community; a city is printed building by building
PAGE_WIDTH, PAGE_HEIGHT = 210.0, 297.0  # A4 portrait, mm
COLUMNS, ROWS = 3, 4
STICKER_WIDTH, STICKER_HEIGHT = 62.0, 66.0
QR_SIZE = 40.0  # mm, the quiet zone included
QUIET_ZONE = 4  # modules


class StickerFontMissing(DomainError):
    code = ErrorCode.NOTICE_FONT_MISSING
    message = "贴纸字体文件不存在或无法读取 (SHUIWU_PAYMENTS_RECEIPT_FONT; Debian: fonts-wqy-microhei)"
    message_en = "The sticker font is missing or unreadable (SHUIWU_PAYMENTS_RECEIPT_FONT; Debian: fonts-wqy-microhei)"


class TooManyStickers(DomainError):
    code = ErrorCode.TOO_MANY_ROWS
    message = f"一次最多打印 {MAX_STICKERS} 张缴费码, 请选择较小的片区 (楼宇)"
    message_en = f"At most {MAX_STICKERS} stickers print at once; choose a smaller area (a building)"


def static_qr_url(public_base_url: str, secret: str, household_id: int) -> str:
    """What a household's sticker encodes."""
    return f"{public_base_url.rstrip('/')}/pay/s/{static_qr_token(secret, household_id)}"


def qr_matrix(content: str) -> list[list[bool]]:
    """The QR's modules (True: dark), error correction M, without the quiet zone."""
    from reportlab.graphics.barcode import qrencoder

    code = qrencoder.QRCode(None, qrencoder.QRErrorCorrectLevel.M)
    code.addData(content)
    code.make()
    size = code.getModuleCount()
    return [[bool(code.isDark(row, column)) for column in range(size)] for row in range(size)]


def qr_png(content: str, *, scale: int = 8) -> bytes:
    """The QR as a black-on-white PNG, ``scale`` pixels a module, with its quiet zone."""
    from PIL import Image

    matrix = qr_matrix(content)
    side = len(matrix) + 2 * QUIET_ZONE
    image = Image.new("1", (side, side), 1)
    pixels = image.load()
    assert pixels is not None
    for y, row in enumerate(matrix):
        for x, dark in enumerate(row):
            if dark:
                pixels[x + QUIET_ZONE, y + QUIET_ZONE] = 0
    out = io.BytesIO()
    image.resize((side * scale, side * scale), Image.Resampling.NEAREST).save(out, format="PNG", optimize=True)
    return out.getvalue()


def qr_svg(content: str) -> str:
    """The QR as an SVG (one path, a unit a module), with its quiet zone."""
    matrix = qr_matrix(content)
    side = len(matrix) + 2 * QUIET_ZONE
    cells = "".join(f"M{x + QUIET_ZONE} {y + QUIET_ZONE}h1v1h-1z"
                    for y, row in enumerate(matrix) for x, dark in enumerate(row) if dark)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {side} {side}" shape-rendering="crispEdges">'
            f'<rect width="{side}" height="{side}" fill="#fff"/><path d="{cells}" fill="#000"/></svg>')


@dataclass(frozen=True, slots=True)
class Sticker:
    household_id: int
    account_no: str
    masked_address: str
    building: str  # community and building: a new page starts with each
    building_id: int | None
    url: str


_HOUSEHOLDS = f"""
SELECT h.id, h.account_no, coalesce(nullif(btrim(h.address), ''), {unit_name_sql('a', 'h.room')}, '') AS place,
       concat_ws(' ', {area_name_sql('a', 'community')}, {area_name_sql('a', 'building')}) AS building,
       (SELECT x.id FROM areas x WHERE x.id = ANY(CAST(string_to_array(trim(BOTH '/' FROM a.path), '/') AS bigint[]))
        AND x.kind = 'building' ORDER BY length(x.path) DESC LIMIT 1) AS building_id,
       {room_label_sql('a', 'h.room')} AS room_label
FROM households h JOIN areas a ON a.id = h.area_id
WHERE a.path LIKE :prefix AND h.status <> 'closed'
ORDER BY building, room_label NULLS LAST, h.account_no
LIMIT :limit
"""


_ONE_HOUSEHOLD = _HOUSEHOLDS.replace(
    "a.path LIKE :prefix",
    "h.id = :household_id AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))")


async def sticker_households(session: AsyncSession, *, area_id: int, scope_patterns: Sequence[str] | None,
                             public_base_url: str, secret: str) -> list[Sticker]:
    """A sticker for every household of the area's subtree, in the order of a door round
    (building, room, 缴费号); NOT_FOUND for an area outside the scope, TOO_MANY_ROWS past
    :data:`MAX_STICKERS`."""
    path = await area_path_in_scope(session, area_id, scope_patterns)
    rows = (await session.execute(text(_HOUSEHOLDS), {"prefix": path + "%", "limit": MAX_STICKERS + 1})).all()
    if len(rows) > MAX_STICKERS:
        raise TooManyStickers()
    return [Sticker(household_id=row.id, account_no=row.account_no, masked_address=mask_address(row.place or ""),
                    building=row.building or "", building_id=row.building_id,
                    url=static_qr_url(public_base_url, secret, row.id)) for row in rows]


async def household_in_scope(session: AsyncSession, *, household_id: int, scope_patterns: Sequence[str] | None,
                             field: str = "householdId") -> None:
    """NOT_FOUND unless the household lies in the scope (what a link to its QR checks first)."""
    row = (await session.execute(text(_ONE_HOUSEHOLD), {"household_id": household_id, "limit": 1,
                                                        "patterns": patterns_param(scope_patterns)})).first()
    if row is None:
        raise NotFound(field=field)


async def household_sticker(session: AsyncSession, *, household_id: int, scope_patterns: Sequence[str] | None,
                            public_base_url: str, secret: str) -> Sticker:
    """One household's sticker; NOT_FOUND outside the scope (its existence does not leak)."""
    row = (await session.execute(text(_ONE_HOUSEHOLD), {"household_id": household_id, "limit": 1,
                                                        "patterns": patterns_param(scope_patterns)})).first()
    if row is None:
        raise NotFound(field="householdId")
    return Sticker(household_id=row.id, account_no=row.account_no, masked_address=mask_address(row.place or ""),
                   building=row.building or "", building_id=row.building_id,
                   url=static_qr_url(public_base_url, secret, row.id))


def _draw_qr(page: object, matrix: list[list[bool]], x_mm: float, top_mm: float) -> None:
    side = len(matrix) + 2 * QUIET_ZONE
    module = QR_SIZE / side * MM
    left, top = x_mm * MM, (PAGE_HEIGHT - top_mm) * MM
    page.setFillColorRGB(0, 0, 0)  # type: ignore[attr-defined]
    for y, row in enumerate(matrix):
        x = 0
        while x < len(row):  # runs of dark modules as one rectangle each
            if not row[x]:
                x += 1
                continue
            start = x
            while x < len(row) and row[x]:
                x += 1
            page.rect(left + (start + QUIET_ZONE) * module, top - (y + QUIET_ZONE + 1) * module,  # type: ignore[attr-defined]
                      (x - start) * module, module, stroke=0, fill=1)


def render_sticker_sheet(stickers: Sequence[Sticker], *, font: PdfFont, utility_name: str = "") -> bytes:
    """The stickers as an A4 PDF, 12 a page, a building's first on a new page; a page
    saying so when there are none. Pure and CPU-bound: run it in a thread."""
    from reportlab.pdfgen import canvas

    try:
        name = register_font(font)
    except FontUnavailable:
        raise StickerFontMissing() from None
    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=(PAGE_WIDTH * MM, PAGE_HEIGHT * MM), pageCompression=1)
    page.setTitle("静态缴费码")
    if not stickers:
        draw_text(page, name, PAGE_WIDTH / 2, 40, "所选片区没有住户", 14, height=PAGE_HEIGHT, centre=True)
    left_margin = (PAGE_WIDTH - COLUMNS * STICKER_WIDTH) / 2
    top_margin = (PAGE_HEIGHT - ROWS * STICKER_HEIGHT) / 2
    slot = 0
    building: str | None = None
    for sticker in stickers:
        if slot == COLUMNS * ROWS or (building is not None and sticker.building != building and slot):
            page.showPage()
            slot = 0
        building = sticker.building
        column, row = slot % COLUMNS, slot // COLUMNS
        x, top = left_margin + column * STICKER_WIDTH, top_margin + row * STICKER_HEIGHT
        page.setDash(2, 2)
        page.setLineWidth(0.3)
        page.rect(x * MM, (PAGE_HEIGHT - top - STICKER_HEIGHT) * MM, STICKER_WIDTH * MM, STICKER_HEIGHT * MM)
        page.setDash()
        centre = x + STICKER_WIDTH / 2
        draw_text(page, name, centre, top + 7, "扫码缴水费", 12, bold=True, height=PAGE_HEIGHT, centre=True)
        _draw_qr(page, qr_matrix(sticker.url), centre - QR_SIZE / 2, top + 9)
        draw_text(page, name, centre, top + 9 + QR_SIZE + 5, f"户号 {sticker.account_no}", 9, height=PAGE_HEIGHT,
                  centre=True)
        draw_text(page, name, centre, top + 9 + QR_SIZE + 9.5, sticker.masked_address, 7.5, height=PAGE_HEIGHT,
                  centre=True)
        footer = f"{utility_name} 支付宝 / 微信扫码" if utility_name else "支付宝 / 微信扫码"
        draw_text(page, name, centre, top + STICKER_HEIGHT - 2.5, footer, 6.5, height=PAGE_HEIGHT, centre=True)
        slot += 1
    page.showPage()
    with SUBSETTING:
        page.save()
    return out.getvalue()


async def render_sticker_sheet_async(stickers: Sequence[Sticker], *, font: PdfFont, utility_name: str = "") -> bytes:
    """:func:`render_sticker_sheet` in a worker thread."""
    return await asyncio.to_thread(render_sticker_sheet, stickers, font=font, utility_name=utility_name)
