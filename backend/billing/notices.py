"""Bill notices for door delivery (上门投递): 缴费通知单 and 催缴单, printed per building.

**What prints.** :func:`household_notices` gathers, for the households of an area's
subtree in the caller's scope, a 缴费通知单 (``notice``) of every open bill of one
period: the household, its place, the period, each meter's start and end reading, the
volume, the bill's lines, the amount, what was paid already, the due date and the late
fee rule; or a 催缴单 (``reminder``) of every household with bills overdue on the print
day: each overdue bill with its principal owed, its late fee on the print day and the
total, then a firm, polite demand. One notice per household; a reminder lists all its
overdue bills. Figures are read, never stored (``backend.billing.bill_queries``), so
the late fee printed is the one a payment that day would post.

**How it prints** (:func:`render_notices`, pure and CPU-bound: run it in a thread):
A4 portrait, two notices a page, the halves parted by a dashed cut line, as utilities
print them for delivery: a notice too long for half a page (many overdue periods)
takes a page of its own. Each building starts a new page, so the stack of one building
goes to one deliverer; each notice carries its building and its place in the round
("翠湖小区 1号楼 第 3/24 户"). Households come in the order of a door round: community,
building, room label, 缴费号. The text is set in the notices' TrueType font (:mod:`backend.exports.pdf`).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.bill_queries import (
    BillRow,
    NoticeKind,
    bill_owed,
    lines_by_bill_ids,
    notice_bills,
    readings_of,
)
from backend.db import raw_connection
from backend.errors import DomainError, ErrorCode
from backend.exports.pdf import MM, SUBSETTING, FontUnavailable, PdfFont, draw_text, register_font
from backend.readings.partitions import as_zone

__all__ = [
    "HouseholdNotice", "NoticeBill", "NoticeFontMissing", "NoticeLine", "NoticeMeter", "NoticeWords",
    "household_notices", "local_today", "render_notices", "render_notices_async",
]

PAGE_WIDTH, PAGE_HEIGHT = 210.0, 297.0  # A4 portrait, mm
SLOT_HEIGHT = PAGE_HEIGHT / 2  # two notices a page
MARGIN = 14.0
ROW = 5.6  # a table row, mm


class NoticeFontMissing(DomainError):
    code = ErrorCode.NOTICE_FONT_MISSING
    message = "通知单字体文件不存在或无法读取 (SHUIWU_BILLING_NOTICE_FONT; Debian: fonts-wqy-microhei)"
    message_en = "The notice font is missing or unreadable (SHUIWU_BILLING_NOTICE_FONT; Debian: fonts-wqy-microhei)"


@dataclass(frozen=True, slots=True)
class NoticeWords:
    """What every notice says about the utility (``backend.billing.settings``)."""

    utility_name: str = "自来水公司"
    service_phone: str = ""
    payment_methods: str = ""
    reminder_days: int = 7


@dataclass(frozen=True, slots=True)
class NoticeMeter:
    """A meter's readings on a bill: where it started and ended, and the difference."""

    code: str
    start_at: date
    start_m3: Decimal
    end_at: date
    end_m3: Decimal

    @property
    def used_m3(self) -> Decimal:
        return self.end_m3 - self.start_m3


@dataclass(frozen=True, slots=True)
class NoticeLine:
    name: str
    tier: int
    volume_m3: Decimal
    price: Decimal
    amount_fen: int
    # The year of an earlier annual tier cycle the line is in (a span crossing 1 January:
    # "2025年 第一阶梯"); None for the bill's own cycle.
    cycle_year: int | None = None

    @property
    def tier_label(self) -> str:
        label = "最低消费" if self.tier == 0 else f"第{self.tier}阶梯"
        return label if self.cycle_year is None else f"{self.cycle_year}年 {label}"


@dataclass(frozen=True, slots=True)
class NoticeBill:
    """One bill as a notice prints it, with its figures on the print day."""

    period: date
    months: int
    due_date: date
    volume_m3: Decimal
    amount_fen: int
    principal_paid_fen: int
    principal_owed_fen: int
    late_fee_owed_fen: int
    late_fee_rate: Decimal
    meters: list[NoticeMeter] = field(default_factory=list)
    lines: list[NoticeLine] = field(default_factory=list)
    # The first days of the first and last months the bill's span touches (None: the
    # period's ``months`` from ``period``). A bill's span can start before its period.
    span_months: tuple[date, date] | None = None

    @property
    def owed_fen(self) -> int:
        return self.principal_owed_fen + self.late_fee_owed_fen


@dataclass(frozen=True, slots=True)
class HouseholdNotice:
    """One household's notice: who, where, and its bills (one for a 缴费通知单).
    ``building`` names the delivery round (翠湖小区 1号楼); ``building_id`` tells apart
    two buildings of one name (None: the household lies under no building)."""

    building: str
    account_no: str
    household_name: str
    place: str
    bills: list[NoticeBill]
    building_id: int | None = None

    @property
    def owed_fen(self) -> int:
        return sum(bill.owed_fen for bill in self.bills)


_METER_CODES = "SELECT id, code FROM meters WHERE id = ANY($1::bigint[])"


async def household_notices(
    session: AsyncSession,
    *,
    area_id: int,
    kind: NoticeKind,
    period: date | None,
    today: date,
    tz: str | tzinfo,
    scope_patterns: Sequence[str] | None,
) -> list[HouseholdNotice]:
    """The notices of ``kind`` for the area's subtree (module docstring), in the order of
    a door round; three statements whatever the number of households. NOT_FOUND for an
    area outside the scope, TOO_MANY_ROWS past ``bill_queries.MAX_NOTICE_BILLS``."""
    found = await notice_bills(session, area_id=area_id, kind=kind, period=period, today=today,
                               scope_patterns=scope_patterns)
    if not found:
        return []
    ids = [b.row.bill.id for b in found if b.row.bill.id is not None]
    lines = await lines_by_bill_ids(session, ids)
    meter_ids = sorted({int(r["meter_id"]) for b in found for r in (*b.row.bill.start_readings,
                                                                    *b.row.bill.end_readings)})
    driver = await raw_connection(session)
    codes = {r["id"]: r["code"] for r in await driver.fetch(_METER_CODES, meter_ids)} if meter_ids else {}
    zone = as_zone(tz)
    notices: list[HouseholdNotice] = []
    for noticed in found:
        row = noticed.row
        bill = row.bill
        assert bill.id is not None
        owed = bill_owed(bill, today)
        printed = NoticeBill(
            period=bill.period, months=bill.months, due_date=bill.due_date, volume_m3=bill.volume_m3,
            amount_fen=bill.amount_fen, principal_paid_fen=bill.principal_paid_fen,
            principal_owed_fen=owed.principal_owed_fen, late_fee_owed_fen=owed.late_fee_owed_fen,
            late_fee_rate=bill.late_fee_rate, meters=_meters(bill.start_readings, bill.end_readings, codes, zone),
            lines=[NoticeLine(line.component_name, line.line.tier, line.line.volume_m3, line.line.price,
                              line.line.amount_fen,
                              None if line.line.cycle_start == bill.cycle_start else line.line.cycle_start.year)
                   for line in lines.get(bill.id, [])],
            span_months=(bill.period_start.astimezone(zone).date().replace(day=1),
                         (bill.period_end - timedelta(microseconds=1)).astimezone(zone).date().replace(day=1)),
        )
        if notices and notices[-1].account_no == row.account_no:
            notices[-1].bills.append(printed)
            continue
        building = " ".join(part for part in (row.community, row.building) if part)
        notices.append(HouseholdNotice(building=building, account_no=row.account_no,
                                       household_name=row.household_name, place=_place(row), bills=[printed],
                                       building_id=noticed.building_id))
    return notices


def _place(row: BillRow) -> str:
    """Where the notice goes: the household's address, else its community and room label."""
    if row.address.strip():
        return row.address.strip()
    return " ".join(part for part in (row.community, row.room_label) if part)


def _meters(start: Sequence[dict[str, object]], end: Sequence[dict[str, object]], codes: dict[int, str],
            zone: tzinfo) -> list[NoticeMeter]:
    starts = {reading.meter_id: reading for reading in readings_of(start)}
    found = []
    for finish in readings_of(end):
        began = starts.get(finish.meter_id)
        found.append(NoticeMeter(
            code=codes.get(finish.meter_id, str(finish.meter_id)),
            start_at=(began.read_at if began else finish.read_at).astimezone(zone).date(),
            start_m3=began.total_m3 if began else finish.total_m3,
            end_at=finish.read_at.astimezone(zone).date(), end_m3=finish.total_m3))
    return found


# --------------------------------------------------------------------------- rendering


def _yuan(fen: int) -> str:
    return f"{Decimal(fen).scaleb(-2):,.2f}"


def _day(day: date) -> str:
    return f"{day.year}年{day.month:02d}月{day.day:02d}日"


def _period(bill: NoticeBill) -> str:
    if bill.span_months is not None:
        first, last = bill.span_months
    else:
        first = bill.period
        index = first.year * 12 + first.month - 1 + bill.months - 1
        last = date(index // 12, index % 12 + 1, 1)
    if first == last:
        return f"{first.year}年{first.month:02d}月"
    return f"{first.year}年{first.month:02d}月–{last.year}年{last.month:02d}月"


def _m3(volume: Decimal) -> str:
    # Meter totals and volumes print to the litre that matters: two places, trailing kept.
    return f"{volume.quantize(Decimal('0.01')):,.2f}"


def _permille(rate: Decimal) -> str:
    return f"{(rate * 1000).normalize():f}‰"


@dataclass(slots=True)
class _Pen:
    """Draws one notice into its slot: ``top`` is the slot's top edge on the page, mm."""

    page: object
    font: str
    top: float
    bottom: float = SLOT_HEIGHT  # the notice's bottom edge below ``top``, mm

    def text(self, x: float, y: float, text: str, size: float = 9.5, *, bold: bool = False, centre: bool = False,
             right: bool = False, grey: bool = False) -> float:
        if grey:
            self.page.setFillGray(0.45)  # type: ignore[attr-defined]
        width = draw_text(self.page, self.font, x, self.top + y, text, size, bold=bold, height=PAGE_HEIGHT,
                          centre=centre, right=right)
        if grey:
            self.page.setFillGray(0)  # type: ignore[attr-defined]
        return width

    def rule(self, y: float, *, left: float = MARGIN, right: float = PAGE_WIDTH - MARGIN, width: float = 0.4) -> None:
        self.page.setLineWidth(width)  # type: ignore[attr-defined]
        self.page.line(left * MM, (PAGE_HEIGHT - self.top - y) * MM, right * MM,  # type: ignore[attr-defined]
                       (PAGE_HEIGHT - self.top - y) * MM)

    def shade(self, y: float, height: float) -> None:
        """A light band behind a table's header row (its baseline ``y`` sits in it)."""
        self.page.setFillGray(0.92)  # type: ignore[attr-defined]
        self.page.rect(MARGIN * MM, (PAGE_HEIGHT - self.top - y - 1.6) * MM,  # type: ignore[attr-defined]
                       (PAGE_WIDTH - 2 * MARGIN) * MM, height * MM, stroke=0, fill=1)
        self.page.setFillGray(0)  # type: ignore[attr-defined]

    def table(self, y: float, columns: Sequence[tuple[str, float, str]], rows: Sequence[Sequence[str]]) -> float:
        """A ruled table at ``y`` (its header's baseline); columns are (title, x, align:
        l / r), numbers right-aligned to their column's x. Returns the y after it."""
        self.shade(y, ROW)
        for title, x, align in columns:
            self.text(x, y, title, 8.5, bold=True, right=align == "r")
        self.rule(y - ROW + 1.6, width=0.6)
        for row in rows:
            y += ROW
            for (_, x, align), value in zip(columns, row, strict=True):
                self.text(x, y, value, 9, right=align == "r")
        self.rule(y + 1.6, width=0.6)
        return y + ROW


def _height(notice: HouseholdNotice, kind: NoticeKind) -> float:
    """How tall the notice is drawn (mm), to know whether it fits half a page: its fixed
    parts (header, totals, words, signature) and a row per meter and line, or per bill."""
    if kind is NoticeKind.notice:
        bill = notice.bills[0]
        return 122 + ROW * (len(bill.meters) + len(bill.lines))
    return 122 + ROW * len(notice.bills)


def _header(pen: _Pen, notice: HouseholdNotice, title: str, subtitle: str, round_label: str) -> float:
    pen.text(MARGIN, 8, round_label, 7.5, grey=True)
    pen.text(PAGE_WIDTH - MARGIN, 8, "请沿虚线剪开 · 投递联", 7.5, grey=True, right=True)
    pen.text(PAGE_WIDTH / 2, 17, title, 17, bold=True, centre=True)
    pen.text(PAGE_WIDTH / 2, 23.5, subtitle, 9, centre=True, grey=True)
    pen.rule(26.5, width=1.0)
    pen.text(MARGIN, 33, "户　　名：", 9.5)
    pen.text(MARGIN + 19, 33, notice.household_name, 10.5, bold=True)
    pen.text(118, 33, "缴 费 号：", 9.5)
    pen.text(136, 33, notice.account_no, 10.5, bold=True)
    pen.text(MARGIN, 39.5, "用水地址：", 9.5)
    pen.text(MARGIN + 19, 39.5, notice.place, 9.5)
    return 47


def _footer(pen: _Pen, y: float, words: NoticeWords, lines: Sequence[str], today: date, bottom: float) -> None:
    """The notice's words, how to pay and ask, and the utility's signature above
    ``bottom`` (the notice's bottom edge in its slot, mm)."""
    for line in lines:
        pen.text(MARGIN, y, line, 8.5)
        y += 4.8
    if words.payment_methods:
        pen.text(MARGIN, y, f"缴费方式：{words.payment_methods}", 8.5)
        y += 4.8
    if words.service_phone:
        pen.text(MARGIN, y, f"服务热线：{words.service_phone}", 8.5)
        y += 4.8
    signed = max(y + 8, bottom - 16)
    pen.text(PAGE_WIDTH - MARGIN - 4, signed, words.utility_name, 10, right=True)
    pen.text(PAGE_WIDTH - MARGIN - 4, signed + 5.5, _day(today), 9, right=True)
    pen.text(MARGIN, bottom - 5, "本通知单仅作缴费提示，不作为收费凭证；缴费后请索取或下载正式票据。", 7.5, grey=True)


def _draw_notice(pen: _Pen, notice: HouseholdNotice, words: NoticeWords, today: date, round_label: str) -> None:
    bill = notice.bills[0]
    y = _header(pen, notice, f"{words.utility_name}水费缴费通知单",
                f"账期 {_period(bill)}　　通知日期 {_day(today)}", round_label)
    y = pen.table(y, (("水表编号", MARGIN + 1, "l"), ("上期抄表日", 62, "l"), ("上期读数", 108, "r"),
                      ("本期抄表日", 114, "l"), ("本期读数", 165, "r"), ("用水量 (m³)", PAGE_WIDTH - MARGIN - 1, "r")),
                  [(m.code, _day(m.start_at), _m3(m.start_m3), _day(m.end_at), _m3(m.end_m3), _m3(m.used_m3))
                   for m in bill.meters])
    y += 2
    y = pen.table(y, (("收费项目", MARGIN + 1, "l"), ("阶梯", 80, "l"), ("水量 (m³)", 125, "r"),
                      ("单价 (元/m³)", 160, "r"), ("金额 (元)", PAGE_WIDTH - MARGIN - 1, "r")),
                  [(line.name, line.tier_label, _m3(line.volume_m3),
                    f"{line.price:.2f}" if line.price == line.price.quantize(Decimal("0.01")) else f"{line.price:.4f}",
                    _yuan(line.amount_fen)) for line in bill.lines])
    y += 3
    pen.text(MARGIN, y, f"本期用水量：{_m3(bill.volume_m3)} m³", 10)
    pen.text(PAGE_WIDTH - MARGIN - 38, y, "本期水费：", 10, right=True)
    pen.text(PAGE_WIDTH - MARGIN - 1, y, f"¥ {_yuan(bill.amount_fen)}", 12, bold=True, right=True)
    if bill.principal_paid_fen or bill.late_fee_owed_fen:
        y += 6
        pen.text(PAGE_WIDTH - MARGIN - 38, y, "已缴 / 滞纳金：", 9, right=True)
        pen.text(PAGE_WIDTH - MARGIN - 1, y, f"{_yuan(bill.principal_paid_fen)} / {_yuan(bill.late_fee_owed_fen)}",
                 9, right=True)
    y += 7
    pen.text(MARGIN, y, f"缴费截止日期：{_day(bill.due_date)}", 10.5, bold=True)
    pen.text(PAGE_WIDTH - MARGIN - 38, y, "应缴金额：", 10.5, bold=True, right=True)
    pen.text(PAGE_WIDTH - MARGIN - 1, y, f"¥ {_yuan(bill.owed_fen)}", 13, bold=True, right=True)
    y += 4
    pen.rule(y, width=0.4)
    late_rule = (f"逾期未缴的，自截止日次日起按欠费金额每日 {_permille(bill.late_fee_rate)} 加收滞纳金。"
                 if bill.late_fee_rate else "请按期缴费。")
    _footer(pen, y + 5.5, words, [f"尊敬的用户：您户本期水费如上，请于截止日期前缴清。{late_rule}"], today,
            pen.bottom)


def _draw_reminder(pen: _Pen, notice: HouseholdNotice, words: NoticeWords, today: date, round_label: str) -> None:
    y = _header(pen, notice, f"{words.utility_name}水费催缴单", f"打印日期 {_day(today)}", round_label)
    pen.text(MARGIN, y, f"尊敬的用户：截至 {_day(today)}，您户下列水费已超过缴费期限，至今尚未结清：", 9.5)
    y += 7
    rows = []
    for bill in notice.bills:
        late_days = (today - bill.due_date).days
        rows.append((_period(bill), _yuan(bill.amount_fen), _day(bill.due_date), f"{late_days}",
                     _yuan(bill.principal_owed_fen), _yuan(bill.late_fee_owed_fen), _yuan(bill.owed_fen)))
    y = pen.table(y, (("账期", MARGIN + 1, "l"), ("账单金额", 70, "r"), ("缴费截止日", 75, "l"), ("逾期天数", 122, "r"),
                      ("欠缴水费", 145, "r"), ("滞纳金", 165, "r"), ("小计 (元)", PAGE_WIDTH - MARGIN - 1, "r")), rows)
    y += 3
    pen.text(MARGIN, y, f"滞纳金计至 {_day(today)}，此后按日继续计收。", 8.5, grey=True)
    pen.text(PAGE_WIDTH - MARGIN - 38, y, "合计欠费：", 10.5, bold=True, right=True)
    pen.text(PAGE_WIDTH - MARGIN - 1, y, f"¥ {_yuan(notice.owed_fen)}", 13, bold=True, right=True)
    y += 4
    pen.rule(y, width=0.4)
    _footer(pen, y + 5.5, words, [
        f"请您自收到本通知之日起 {words.reminder_days} 日内缴清上述欠费。逾期仍未缴清的，滞纳金将按日继续计收，",
        "我公司将依照供用水合同及有关规定采取进一步催缴措施，由此产生的后果由欠费用户承担。",
        "如您已缴清，请忽略本通知。感谢您的理解与配合！",
    ], today, pen.bottom)


def _cut_line(page: object) -> None:
    page.saveState()  # type: ignore[attr-defined]
    page.setDash(3, 2)  # type: ignore[attr-defined]
    page.setLineWidth(0.4)  # type: ignore[attr-defined]
    page.setStrokeGray(0.5)  # type: ignore[attr-defined]
    page.line(6 * MM, SLOT_HEIGHT * MM, (PAGE_WIDTH - 6) * MM, SLOT_HEIGHT * MM)  # type: ignore[attr-defined]
    page.restoreState()  # type: ignore[attr-defined]


def render_notices(notices: Sequence[HouseholdNotice], *, kind: NoticeKind, today: date, font: PdfFont,
                   words: NoticeWords = NoticeWords()) -> bytes:
    """The PDF of ``notices`` (module docstring: two a page, a building a new page).
    NOTICE_FONT_MISSING when the font cannot be used. An empty list prints one page
    saying there is nothing to deliver."""
    from reportlab.pdfgen import canvas

    try:
        name = register_font(font)
    except FontUnavailable as error:
        raise NoticeFontMissing(field="font") from error
    output = io.BytesIO()
    page = canvas.Canvas(output, pagesize=(PAGE_WIDTH * MM, PAGE_HEIGHT * MM), pageCompression=1, invariant=True)
    title = "水费缴费通知单" if kind is NoticeKind.notice else "水费催缴单"
    page.setTitle(title)
    page.setCreator("shuiwu")
    if not notices:
        draw_text(page, name, PAGE_WIDTH / 2, 40, f"没有需要投递的{title}", 14, height=PAGE_HEIGHT, centre=True)
        page.showPage()
    by_building: dict[tuple[int | None, str], int] = {}
    for notice in notices:
        key = (notice.building_id, notice.building)
        by_building[key] = by_building.get(key, 0) + 1
    slot = 0  # 0: the page is empty, 1: its top half is used
    building: tuple[int | None, str] | None = None
    number = 0
    for notice in notices:
        if (notice.building_id, notice.building) != building:
            building, number = (notice.building_id, notice.building), 0
            if slot:
                page.showPage()
                slot = 0
        number += 1
        tall = _height(notice, kind) > SLOT_HEIGHT - 4
        if slot and tall:
            page.showPage()
            slot = 0
        pen = _Pen(page, name, top=SLOT_HEIGHT if slot else 0.0, bottom=PAGE_HEIGHT if tall else SLOT_HEIGHT)
        label = f"{notice.building or '—'}　第 {number}/{by_building[building]} 户"
        if kind is NoticeKind.notice:
            _draw_notice(pen, notice, words, today, label)
        else:
            _draw_reminder(pen, notice, words, today, label)
        if tall or slot:
            page.showPage()
            slot = 0
        else:
            _cut_line(page)
            slot = 1
    if slot:
        page.showPage()
    with SUBSETTING:
        page.save()
    return output.getvalue()


async def render_notices_async(notices: Sequence[HouseholdNotice], *, kind: NoticeKind, today: date, font: PdfFont,
                               words: NoticeWords = NoticeWords()) -> bytes:
    """:func:`render_notices` in a worker thread (a building's pages keep the loop free)."""
    return await asyncio.to_thread(render_notices, notices, kind=kind, today=today, font=font, words=words)


def local_today(now: datetime, tz: str | tzinfo) -> date:
    """The utility's day holding ``now``: the day late fees and overdue are read on."""
    return now.astimezone(as_zone(tz)).date()
