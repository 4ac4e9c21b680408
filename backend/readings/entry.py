"""Readings that people make rather than meters: manual entry (抄表录入, also the staff
app's field reading), uploads of manual reads (Excel or CSV), corrections of a stored
reading, and estimates for the days a meter stayed silent.

Entry, uploads and estimates all write through ``ingest_readings``, so they share its
validation, quality precedence (actual > manual > estimated), daily rollup, alarms and
``readings.ingested`` event; an estimate is superseded by the meter's next actual or
manual reading (ingest deletes the older estimates). A correction is the one change to a
stored reading outside ingest (DESIGN.md, "Enums"): it rewrites the total, marks the
source, and lets ``after_readings_changed`` refresh everything derived from it.

Scope: every function takes the caller's ``scope_patterns`` (``areas.path LIKE ANY``;
``None`` means unrestricted, for system callers) and applies them in the SQL that finds
the meters; a meter outside them is NOT_FOUND, a code outside them an unknown meter.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.errors import DomainError, ErrorCode, NotFound
from backend.exports import excel
from backend.files import photos
from backend.files.service import FileStore
from backend.readings.models import ReadingQuality
from backend.readings.partitions import DEFAULT_TIMEZONE, as_zone
from backend.readings.rollup import is_rollover, zone_name
from backend.readings.service import IngestResult, ReadingIn, Rejection, after_readings_changed, ingest_readings

MANUAL_SOURCE = "manual"
CORRECTION_SOURCE = "correction"
ESTIMATE_SOURCE = "estimate"
MAX_REASON_LENGTH = 500
# An upload's size is its request body's (SHUIWU_IMPORT_MAX_BODY_BYTES, refused at the door);
# rows, unpacked size and time are excel.UploadLimits (SHUIWU_IMPORT_*), the same for every
# import. A 10 MB zip can hold gigabytes of XML, and openpyxl keeps the shared strings in
# memory even in read-only mode.
MAX_ESTIMATION_DAYS = 93
# Meters x days of one estimation: every silent meter-day becomes a reading in memory
# and one ingest batch; a larger area is estimated a sub-area or a few days at a time.
MAX_ESTIMATION_METER_DAYS = 200_000
# Where an estimate sits in its day: the day's last second, so it is the day's last reading.
ESTIMATE_TIME = "23:59:59"
# numeric(16,4): 12 integer digits.
_MAX_TOTAL = Decimal(10) ** 12
_PLACES = Decimal("0.0001")

# Which input field a rejection of ingest points at.
_REJECTION_FIELDS = {
    ErrorCode.UNKNOWN_METER: "meterId",
    ErrorCode.READ_AT_IN_FUTURE: "readAt",
    ErrorCode.READ_BEFORE_INSTALL: "readAt",
    ErrorCode.NAIVE_DATETIME: "readAt",
    ErrorCode.INVALID_TOTAL: "totalM3",
}


# --------------------------------------------------------------------------- errors


class ReadingLowerThanPrevious(DomainError):
    code = ErrorCode.READING_LOWER_THAN_PREVIOUS

    def __init__(self, previous: Decimal) -> None:
        super().__init__(
            f"读数低于上一次读数 {previous}, 请核对; 确认无误请勾选「确认低于上次读数」",
            f"The total is lower than the previous reading ({previous}); check it, or confirm it",
            field="totalM3",
        )


class NotSpreadsheet(DomainError):
    code = ErrorCode.NOT_XLSX
    message = "文件不是 Excel (.xlsx) 工作簿或 CSV 文件"
    message_en = "The file is neither an Excel (.xlsx) workbook nor a CSV file"


def _invalid_total(field_name: str) -> DomainError:
    return DomainError("累计读数须为不超过 4 位小数的非负数", "The total must be a non-negative number with at most 4 places",
                       field=field_name, code=ErrorCode.INVALID_TOTAL)


def _storable(total: Decimal) -> bool:
    """Fits numeric(16,4) exactly and is a register value (finite, not negative)."""
    return total.is_finite() and 0 <= total < _MAX_TOTAL and total == total.quantize(_PLACES)


def checked_total(total: Decimal, *, field_name: str = "totalM3") -> Decimal:
    """``total`` as its numeric(16,4) column holds it; INVALID_TOTAL when it cannot be one."""
    if not _storable(total):
        raise _invalid_total(field_name)
    return total.quantize(_PLACES)


# --------------------------------------------------------------------------- stored readings


@dataclass(frozen=True, slots=True)
class StoredReading:
    meter_id: int
    read_at: datetime
    total_m3: Decimal
    quality: ReadingQuality
    source: str
    received_at: datetime


_STORED = text("""
SELECT meter_id, read_at, total_m3, quality, source, received_at FROM readings
WHERE meter_id = :meter_id AND read_at = :read_at
""")


async def stored_reading(session: AsyncSession, *, meter_id: int, read_at: datetime) -> StoredReading | None:
    """The reading stored for (meter, instant), if any."""
    row = (await session.execute(_STORED, {"meter_id": meter_id, "read_at": read_at})).one_or_none()
    if row is None:
        return None
    return StoredReading(row.meter_id, row.read_at, row.total_m3, ReadingQuality(row.quality), row.source, row.received_at)


_SCOPED_METER = text("""
SELECT m.id, mm.register_digits FROM meters m
JOIN areas a ON a.id = m.area_id
LEFT JOIN meter_models mm ON mm.id = m.model_id
WHERE m.id = :meter_id AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
""")


def _patterns(scope_patterns: Sequence[str] | None) -> list[str] | None:
    return None if scope_patterns is None else list(scope_patterns)


async def _scoped_meter(session: AsyncSession, meter_id: int, scope_patterns: Sequence[str] | None) -> Any:
    row = (await session.execute(_SCOPED_METER, {"meter_id": meter_id, "patterns": _patterns(scope_patterns)})).one_or_none()
    if row is None:
        raise NotFound(field="meterId")
    return row


# --------------------------------------------------------------------------- manual entry

MAX_IDEMPOTENCY_KEY_LENGTH = 64
PHOTO_PURPOSE = photos.PHOTO_PURPOSE  # what POST /files/photos stores a photo as


@dataclass(frozen=True, slots=True)
class Photo:
    """A dial photo offered with an entry: the stored file's key and who offers it (a
    principal's kind and id: only the one who stored a photo may attach it)."""

    key: str
    owner_kind: str
    owner_id: int


class PhotoInvalid(DomainError):
    code = ErrorCode.PHOTO_INVALID
    message = "照片须为本人上传的图片"
    message_en = "The photo must be an image you uploaded"


class EntryKeyConflict(DomainError):
    code = ErrorCode.IDEMPOTENCY_CONFLICT
    message = "该幂等键已用于另一条读数 (表计、时间或读数不同)"
    message_en = "This idempotency key was used for a different reading (meter, time or total)"


def checked_idempotency_key(key: str) -> str:
    cleaned = key.strip()
    if not cleaned or len(cleaned) > MAX_IDEMPOTENCY_KEY_LENGTH or not cleaned.isprintable() or not cleaned.isascii():
        raise DomainError(f"幂等键须为 1 至 {MAX_IDEMPOTENCY_KEY_LENGTH} 个可打印 ASCII 字符",
                          f"An idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters",
                          field="idempotencyKey", code=ErrorCode.INVALID)
    return cleaned


async def _checked_photo(session: AsyncSession, files: FileStore, photo: Photo) -> str:
    """The photo's key once it is a finished image stored by its offerer; FILE_NOT_FOUND
    for no such file (or one being written), PHOTO_INVALID for anything else. Another
    person's photo is PHOTO_INVALID, not readable: its existence tells nothing new, as its
    key is unguessable and came from the caller."""
    try:
        stored = await files.describe(session, key=photo.key)
    except ValueError:  # not even a key's shape
        raise DomainError("文件不存在或已过期删除", "The file does not exist (or expired and was deleted)",
                          field="photoId", code=ErrorCode.FILE_NOT_FOUND) from None
    except DomainError as error:
        error.field = "photoId"
        raise
    if (stored.purpose != PHOTO_PURPOSE or not stored.content_type.startswith("image/")
            or (stored.owner_kind, stored.owner_id) != (photo.owner_kind, photo.owner_id)):
        raise PhotoInvalid(field="photoId")
    return stored.key


# The entry's key claimed first: a concurrent second sync of the same key waits on the
# unique index until the first commits, then finds its row (a replay) or, if the first
# rolled back, claims the key itself.
_CLAIM_ENTRY = text("""
INSERT INTO reading_entries (idempotency_key, meter_id, read_at, total_m3, photo_key, entered_by, created_at)
VALUES (:key, :meter_id, :read_at, :total, :photo_key, :by, :now)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
""")

_CLAIMED_ENTRY = text("SELECT meter_id, read_at, total_m3 FROM reading_entries WHERE idempotency_key = :key")


# The previous reading that was read, not guessed: an estimate gives way to the entry anyway.
_PREVIOUS = text("""
SELECT total_m3 FROM readings WHERE meter_id = :meter_id AND read_at < :read_at AND quality <> 'estimated'
ORDER BY read_at DESC LIMIT 1
""")


async def enter_reading(
    session: AsyncSession,
    *,
    meter_id: int,
    read_at: datetime,
    total_m3: Decimal,
    by: str,
    now: datetime,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
    scope_patterns: Sequence[str] | None,
    confirm_lower: bool = False,
    idempotency_key: str | None = None,
    photo: Photo | None = None,
    files: FileStore | None = None,
) -> IngestResult:
    """Store one manual reading (quality manual, source ``manual:<by>``); the caller commits.

    NOT_FOUND for a meter outside the scope; a total lower than the meter's previous
    actual or manual reading (and not a register rollover) is refused with READING_LOWER_THAN_PREVIOUS
    unless ``confirm_lower``; anything ingest rejects is raised with its code. A reading
    already stored at that instant with an equal or better quality makes a duplicate.

    ``idempotency_key`` (a field reading synced from an offline phone): the first entry
    with it is stored with the key; a replay (same key, meter, instant and total) stores
    nothing and answers one duplicate; the same key with another meter, instant or
    total is IDEMPOTENCY_CONFLICT. ``photo`` (needs ``files``): a dial photo stored by
    the offerer (purpose ``photos``, an image), kept from now on (no expiry).
    """
    meter = await _scoped_meter(session, meter_id, scope_patterns)
    total = checked_total(total_m3)
    photo_key = None
    if photo is not None:
        if files is None:
            raise ValueError("a photo needs the file store")
        photo_key = await _checked_photo(session, files, photo)
    # A naive instant is refused by ingest below, before anything is claimed for it.
    if read_at.tzinfo is not None and (idempotency_key is not None or photo_key is not None):
        key = checked_idempotency_key(idempotency_key) if idempotency_key is not None else None
        claimed = (await session.execute(_CLAIM_ENTRY, {
            "key": key, "meter_id": meter_id, "read_at": read_at, "total": total, "photo_key": photo_key,
            "by": by[:100], "now": now,
        })).scalar_one_or_none()
        if claimed is None:
            first = (await session.execute(_CLAIMED_ENTRY, {"key": key})).one()
            if (first.meter_id, first.read_at, first.total_m3) != (meter_id, read_at, total):
                raise EntryKeyConflict(field="idempotencyKey")
            return IngestResult("", 0, 0, 1)
        if photo_key is not None and files is not None:
            await files.keep(session, key=photo_key, until=None)
    if read_at.tzinfo is not None and not confirm_lower:
        previous = (await session.execute(_PREVIOUS, {"meter_id": meter_id, "read_at": read_at})).scalar_one_or_none()
        if previous is not None and total < previous and not is_rollover(previous, total, meter.register_digits):
            raise ReadingLowerThanPrevious(previous)
    result = await ingest_readings(
        session, readings=[ReadingIn(meter_id=meter_id, read_at=read_at, total_m3=total, quality=ReadingQuality.manual)],
        source=f"{MANUAL_SOURCE}:{by}", now=now, tz=tz,
    )
    if result.rejected:
        rejection = result.rejected[0]
        raise DomainError(rejection.message, rejection.message_en, field=_REJECTION_FIELDS.get(rejection.code),
                          code=rejection.code)
    return result


# --------------------------------------------------------------------------- correction


@dataclass(frozen=True, slots=True)
class Correction:
    """The corrected reading and the total it had before."""

    reading: StoredReading
    previous_total: Decimal
    reason: str


_LOCK_READING = text("""
SELECT r.total_m3 FROM readings r
JOIN meters m ON m.id = r.meter_id JOIN areas a ON a.id = m.area_id
WHERE r.meter_id = :meter_id AND r.read_at = :read_at
  AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
FOR UPDATE OF r
""")

_CORRECT = text("""
UPDATE readings SET total_m3 = :total, source = :source, received_at = :now
WHERE meter_id = :meter_id AND read_at = :read_at
""")


def checked_reason(reason: str) -> str:
    cleaned = reason.strip()
    if not cleaned:
        raise DomainError("请填写更正原因", "A reason is required", field="reason", code=ErrorCode.REQUIRED)
    if len(cleaned) > MAX_REASON_LENGTH:
        raise DomainError(f"更正原因不能超过 {MAX_REASON_LENGTH} 个字符", f"The reason has at most {MAX_REASON_LENGTH} characters",
                          field="reason", code=ErrorCode.TOO_LONG)
    if "\x00" in cleaned:
        raise DomainError("文本不能包含 NUL 字符", "Text must not contain NUL characters", field="reason", code=ErrorCode.INVALID)
    return cleaned


async def correct_reading(
    session: AsyncSession,
    *,
    meter_id: int,
    read_at: datetime,
    total_m3: Decimal,
    reason: str,
    by: str,
    now: datetime,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
    scope_patterns: Sequence[str] | None,
) -> Correction:
    """Replace the total of the reading stored at (meter, ``read_at``); the caller commits
    (and audits the returned old and new totals with the reason).

    The quality stays, the source becomes ``correction:<by>``; the daily rollup, latest
    reading and alarms follow and ``readings.ingested`` is emitted again. NOT_FOUND when
    no such reading lies in the scope.
    """
    cleaned = checked_reason(reason)
    total = checked_total(total_m3)
    params = {"meter_id": meter_id, "read_at": read_at}
    previous = (await session.execute(_LOCK_READING, {**params, "patterns": _patterns(scope_patterns)})).scalar_one_or_none()
    if previous is None:
        raise DomainError("读数不存在", "No such reading", field="readAt", code=ErrorCode.NOT_FOUND)
    await session.execute(_CORRECT, {**params, "total": total, "source": f"{CORRECTION_SOURCE}:{by}", "now": now})
    await after_readings_changed(session, changes=[(meter_id, read_at)], now=now, tz=tz)
    reading = await stored_reading(session, meter_id=meter_id, read_at=read_at)
    assert reading is not None  # locked above
    return Correction(reading, previous, cleaned)


# --------------------------------------------------------------------------- estimation


@dataclass(frozen=True, slots=True)
class EstimationResult:
    """``estimated`` readings were written; ``skipped`` meter-days had no daily usage but
    got no estimate (no earlier reading to start from, a later reading already bounds the
    gap, or ingest refused it)."""

    estimated: int
    skipped: int


_ESTIMATION_METERS = text("""
SELECT m.id, m.status IN ('installed', 'faulty') AS estimable FROM meters m
JOIN areas a ON a.id = m.area_id
WHERE (CAST(:meter_ids AS bigint[]) IS NULL OR m.id = ANY(CAST(:meter_ids AS bigint[])))
  AND (CAST(:area_path AS text) IS NULL OR a.path LIKE CAST(:area_path AS text) || '%')
  AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
""")

_SCOPED_AREA = text("""
SELECT path FROM areas
WHERE id = :area_id AND (CAST(:patterns AS text[]) IS NULL OR path LIKE ANY(CAST(:patterns AS text[])))
""")

# Every (meter, day) of the range without a daily_usage row; for each, the meter's last
# day with data before it (the base), its register's growth per day over its last 30
# days with data up to the base, and whether a later day already has data (then the gap
# is bounded by a real reading, which supersedes estimates, and none is made). The
# estimate is the base's register total plus that growth per day since, wrapped at
# 10^register_digits, at the day's last second in the utility's zone (a day is
# (00:00, 24:00], so it is the day's last reading, before a midnight read closing it).
# Growth per day is measured between day-closing readings over the time between them,
# not as a mean of daily_usage rows: a meter read every ten days has one row holding ten
# days of use, and a meter's first row holds only the hours after it was fitted.
_ESTIMATES = text(f"""
WITH chosen AS (
    SELECT m.id AS meter_id, m.install_date, mm.register_digits
    FROM meters m LEFT JOIN meter_models mm ON mm.id = m.model_id
    WHERE m.id = ANY(CAST(:meter_ids AS bigint[]))
), gap AS (
    SELECT c.*, d.day
    FROM chosen c
    CROSS JOIN LATERAL (
        SELECT CAST(g AS date) AS day
        FROM generate_series(CAST(:start AS date), CAST(:end AS date), interval '1 day') AS g
    ) d
    WHERE (c.install_date IS NULL OR d.day >= c.install_date)
      AND NOT EXISTS (SELECT FROM daily_usage u WHERE u.meter_id = c.meter_id AND u.day = d.day)
)
SELECT g.meter_id, g.day,
       ((g.day + time '{ESTIMATE_TIME}') AT TIME ZONE :tz) AS read_at,
       base.day IS NULL OR later.bounded AS skip,
       CASE WHEN g.register_digits IS NULL THEN estimate.total
            ELSE mod(estimate.total, power(10::numeric, g.register_digits)) END AS total_m3
FROM gap g
LEFT JOIN LATERAL (
    SELECT u.day, u.last_total FROM daily_usage u
    WHERE u.meter_id = g.meter_id AND u.day < g.day ORDER BY u.day DESC LIMIT 1
) base ON true
LEFT JOIN LATERAL (
    SELECT coalesce((max(r.effective_total) - min(r.effective_total))
                    / nullif(CAST(extract(epoch FROM max(r.last_at) - min(r.last_at)) AS numeric) / 86400, 0), 0)
           AS daily
    FROM (
        SELECT u.effective_total, u.last_at FROM daily_usage u
        WHERE u.meter_id = g.meter_id AND u.day <= base.day ORDER BY u.day DESC LIMIT 30
    ) r
) average ON true
CROSS JOIN LATERAL (
    SELECT EXISTS (SELECT FROM daily_usage u WHERE u.meter_id = g.meter_id AND u.day > g.day) AS bounded
) later
CROSS JOIN LATERAL (
    SELECT round(base.last_total + average.daily * (g.day - base.day), 4) AS total
) estimate
ORDER BY g.meter_id, g.day
""")


async def estimation_meters(
    session: AsyncSession,
    *,
    meter_ids: Sequence[int] | None,
    area_id: int | None,
    scope_patterns: Sequence[str] | None,
) -> list[int]:
    """The meters to estimate: ``meter_ids`` (each must lie in the scope, else NOT_FOUND)
    and/or the meters of area ``area_id``'s subtree, installed or faulty ones only."""
    patterns = _patterns(scope_patterns)
    area_path = None
    if area_id is not None:
        area_path = (await session.execute(_SCOPED_AREA, {"area_id": area_id, "patterns": patterns})).scalar_one_or_none()
        if area_path is None:
            raise NotFound(field="areaId")
    wanted = sorted(set(meter_ids)) if meter_ids is not None else None
    if wanted is None and area_path is None:
        raise DomainError("请选择表计或区域", "Choose meters or an area", field="meterIds", code=ErrorCode.REQUIRED)
    rows = (await session.execute(
        _ESTIMATION_METERS, {"meter_ids": wanted, "area_path": area_path, "patterns": patterns}
    )).all()
    if wanted is not None and len(rows) != len(wanted) and area_path is None:
        raise NotFound(field="meterIds")
    return [row.id for row in rows if row.estimable]


async def estimate_readings(
    session: AsyncSession,
    *,
    meter_ids: Sequence[int] | None = None,
    area_id: int | None = None,
    start: date,
    end: date,
    now: datetime,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
    scope_patterns: Sequence[str] | None,
) -> EstimationResult:
    """Estimate the days of [start, end] (the utility's days, up to yesterday: today is not
    over) on which the chosen meters have no daily usage; see :data:`_ESTIMATES` for how.

    All estimates go to ingest in one batch (quality estimated, source ``estimate``), so
    re-running over the same days finds no gap and writes nothing; the caller commits.
    """
    if end < start:
        raise DomainError("结束日期早于开始日期", "The end date is before the start date", field="to", code=ErrorCode.INVALID)
    if (end - start).days + 1 > MAX_ESTIMATION_DAYS:
        raise DomainError(f"估算范围不能超过 {MAX_ESTIMATION_DAYS} 天", f"Estimate at most {MAX_ESTIMATION_DAYS} days at once",
                          field="to", code=ErrorCode.RANGE_TOO_LONG)
    zone = as_zone(tz)
    chosen = await estimation_meters(session, meter_ids=meter_ids, area_id=area_id, scope_patterns=scope_patterns)
    last_day = min(end, now.astimezone(zone).date() - timedelta(days=1))
    if not chosen or last_day < start:
        return EstimationResult(0, 0)
    if len(chosen) * ((last_day - start).days + 1) > MAX_ESTIMATION_METER_DAYS:
        raise DomainError(
            f"一次估算的表数 × 天数不能超过 {MAX_ESTIMATION_METER_DAYS}, 请缩小区域或日期范围",
            f"Estimate at most {MAX_ESTIMATION_METER_DAYS} meter-days at once: choose a smaller area or fewer days",
            field="to", code=ErrorCode.RANGE_TOO_LONG,
        )
    rows = (await session.execute(
        _ESTIMATES, {"meter_ids": chosen, "start": start, "end": last_day, "tz": zone_name(zone)}
    )).all()
    estimates = [
        ReadingIn(meter_id=row.meter_id, read_at=row.read_at, total_m3=row.total_m3, quality=ReadingQuality.estimated)
        for row in rows if not row.skip
    ]
    skipped = len(rows) - len(estimates)
    if not estimates:
        return EstimationResult(0, skipped)
    result = await ingest_readings(session, readings=estimates, source=ESTIMATE_SOURCE, now=now, tz=zone)
    written = result.inserted + result.replaced
    return EstimationResult(written, skipped + len(estimates) - written)


# --------------------------------------------------------------------------- uploads

UPLOAD_SHEET = excel.SheetSpec(
    name="抄表录入",
    columns=(
        excel.Column("code", "表计编码", "Meter code", excel.text(32), required=True, width=16, example="M0001",
                     note="系统中的表计编码", text_format=True),
        excel.Column("read_at", "抄表时间", "Read at", excel.text(40), required=True, width=22,
                     example="2026-11-25 09:30", note="YYYY-MM-DD HH:MM[:SS], 本公司时区; 或 Excel 日期时间"),
        excel.Column("total_m3", "累计读数", "Total m3", excel.text(40), required=True, width=14, example=1234.5,
                     note="表盘累计读数 (m³), 最多 4 位小数"),
    ),
    notes=(
        "抄表时间未带时区时按本公司时区理解。",
        "可上传 .xlsx 或 .csv (UTF-8 或 GBK 编码); 先「试导入」可查看结果而不写入。",
        "同一表计同一时间已有读数 (自动抄表或人工) 时不会覆盖, 计为重复。",
    ),
)


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why the upload's row ``row`` (numbered as the file shows it) was not stored."""

    row: int
    code: ErrorCode
    message: str
    message_en: str

    def as_json(self) -> dict[str, Any]:
        return {"row": self.row, "code": self.code.value, "message": self.message, "messageEn": self.message_en}


@dataclass(frozen=True, slots=True)
class UploadRow:
    row: int
    code: str
    read_at: datetime  # naive: the utility's local time
    total_m3: Decimal


@dataclass
class ReadingUpload:
    """An upload parsed and checked row by row (no database yet)."""

    rows: list[UploadRow] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UploadResult:
    """Counts of the ingest (what it wrote, or would have written when ``written`` is
    false: a dry run, or a strict upload with problems) and every row not stored."""

    inserted: int
    replaced: int
    duplicates: int
    rejected: list[RowProblem]
    written: bool

    def as_json(self) -> dict[str, Any]:
        return {"inserted": self.inserted, "replaced": self.replaced, "duplicates": self.duplicates,
                "rejected": [problem.as_json() for problem in self.rejected], "written": self.written}


_DATETIME = re.compile(
    r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})[ T]+(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?\s*(Z|[+-]\d{2}:?\d{2})?"
)


def _bad_read_at() -> excel.CellError:
    return excel.CellError("抄表时间格式须为 2026-11-25 09:30[:00]", "Read times look like 2026-11-25 09:30[:00]")


def parse_read_at(value: Any) -> datetime:
    """A read time from a cell: an Excel datetime or text like 2026-11-25 09:30[:00][+08:00].
    Naive results are the utility's local time. Raises CellError when it is neither."""
    if isinstance(value, datetime):
        return value
    match = None if isinstance(value, date) else _DATETIME.fullmatch(str(value).strip())
    if match is None:
        raise _bad_read_at()
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        parsed = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                          int((fraction or "0").ljust(6, "0")))
        if offset is None:
            return parsed
        return datetime.fromisoformat(f"{parsed.isoformat()}{'+00:00' if offset == 'Z' else offset}")
    except (ValueError, OverflowError):
        raise _bad_read_at() from None


def parse_total(value: Any) -> Decimal:
    """A register total from a cell (a number or its text); CellError when it is not one."""
    invalid = _invalid_total("totalM3")
    problem = excel.CellError(invalid.message, invalid.message_en)
    if isinstance(value, bool):
        raise problem
    try:
        total = value if isinstance(value, Decimal) else Decimal(str(value).strip().replace(",", ""))
    except InvalidOperation:
        raise problem from None
    if isinstance(value, float) and total.is_finite() and abs(total - total.quantize(_PLACES)) < Decimal("1e-9"):
        # A binary float from a workbook formula (12.300000000000001): the register value meant.
        total = total.quantize(_PLACES)
    if not _storable(total):
        raise problem
    return total.quantize(_PLACES)


def _normalised(header: Any) -> str:
    return re.sub(r"\s+", "", str(header)).rstrip("*＊").lower() if header is not None else ""


def _decoded(content: bytes) -> str:
    """CSV text: UTF-8 (with or without BOM) or, as Chinese Excel saves it, GBK."""
    if content.startswith(b"\xef\xbb\xbf"):
        return content[3:].decode("utf-8")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return content.decode("gb18030")  # a superset of GBK
    except UnicodeDecodeError:
        raise NotSpreadsheet(field="file") from None


def _xlsx_rows(content: bytes, counter: excel.RowCounter) -> Iterator[tuple[Any, ...]]:
    workbook = excel.open_workbook(content, limits=counter.limits, budget=counter.budget)
    try:
        sheet = workbook[UPLOAD_SHEET.name] if UPLOAD_SHEET.name in workbook.sheetnames else workbook.worksheets[0]
        yield from excel.sheet_rows(sheet, counter)
    finally:
        workbook.close()


def _csv_rows(content: bytes, counter: excel.RowCounter) -> Iterator[tuple[Any, ...]]:
    decoded = _decoded(content)
    if "\x00" in decoded:
        raise NotSpreadsheet(field="file")
    for row in csv.reader(io.StringIO(decoded, newline="")):
        counter.count()
        yield tuple(row)


def read_upload(
    content: bytes, *, limits: excel.UploadLimits | None = None, budget: excel.ImportBudget | None = None
) -> ReadingUpload:
    """Parse an upload (.xlsx or .csv, told apart by content) and check each row's cells
    (blocking: run it in a thread), within ``limits`` and ``budget`` (as
    :func:`backend.exports.excel.read_rows`). Raises for a file that cannot be read as the
    upload sheet (not a spreadsheet, unpacking too large, too many rows, too slow, missing columns);
    row problems are collected."""
    limits = limits or excel.UploadLimits()
    counter = excel.RowCounter(limits, budget or limits.start())
    rows = _xlsx_rows(content, counter) if content[:4] == b"PK\x03\x04" else _csv_rows(content, counter)
    try:
        upload = _checked_rows(rows)
    except DomainError:
        raise
    except Exception as error:  # a truncated workbook or broken CSV fails only while read
        raise NotSpreadsheet(field="file") from error
    counter.budget.check()
    return upload


def _checked_rows(rows: Iterator[tuple[Any, ...]]) -> ReadingUpload:
    header: tuple[Any, ...] | None = None
    number = 0
    for number, candidate in enumerate(rows, start=1):  # noqa: B007  (finds the first non-empty row)
        if any(value not in (None, "") for value in candidate):
            header = candidate
            break
    if header is None:
        raise excel.EmptySheet(field="file")
    names = {}
    for column in UPLOAD_SHEET.columns:
        names[_normalised(column.header)] = column.key
        names[_normalised(column.header_en)] = column.key
    positions: dict[str, int] = {}
    for position, title in enumerate(header):
        key = names.get(_normalised(title))
        if key is not None and key not in positions:
            positions[key] = position
    missing = [column for column in UPLOAD_SHEET.columns if column.key not in positions]
    if missing:
        raise excel.MissingColumns([c.header for c in missing], [c.header_en for c in missing])
    english = {positions[c.key]: _normalised(c.header_en) for c in UPLOAD_SHEET.columns}
    upload = ReadingUpload()
    header_row = number
    for number, row in enumerate(rows, start=header_row + 1):
        cells = [row[positions[key]] if positions[key] < len(row) else None for key in ("code", "read_at", "total_m3")]
        if all(cell is None or (isinstance(cell, str) and not cell.strip()) for cell in cells):
            continue
        if all(english[positions[key]] == _normalised(cell) for key, cell in zip(("code", "read_at", "total_m3"), cells, strict=True)):
            continue  # the template's English header row
        problem = _row_problem(number, cells)
        if isinstance(problem, RowProblem):
            upload.problems.append(problem)
        else:
            upload.rows.append(problem)
    return upload


def _row_problem(number: int, cells: list[Any]) -> RowProblem | UploadRow:
    raw_code, raw_time, raw_total = cells
    for cell, header, header_en in ((raw_code, "表计编码", "Meter code"), (raw_time, "抄表时间", "Read at"),
                                    (raw_total, "累计读数", "Total")):
        if cell is None or (isinstance(cell, str) and not cell.strip()):
            return RowProblem(number, ErrorCode.REQUIRED, f"{header}: 必填", f"{header_en}: required")
    try:
        code = excel.text(32)(raw_code)
    except excel.CellError as error:
        return RowProblem(number, ErrorCode.UNKNOWN_METER, f"表计编码: {error.message}", f"Meter code: {error.message_en}")
    try:
        read_at = parse_read_at(raw_time)
    except excel.CellError as error:
        return RowProblem(number, ErrorCode.INVALID_READ_AT, error.message, error.message_en)
    try:
        total = parse_total(raw_total)
    except excel.CellError as error:
        return RowProblem(number, ErrorCode.INVALID_TOTAL, error.message, error.message_en)
    return UploadRow(number, code, read_at, total)


_METERS_BY_CODE = text("""
SELECT m.code, m.id FROM meters m JOIN areas a ON a.id = m.area_id
WHERE m.code = ANY(CAST(:codes AS text[]))
  AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
""")


async def import_readings(
    session: AsyncSession,
    *,
    upload: ReadingUpload,
    by: str,
    now: datetime,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
    scope_patterns: Sequence[str] | None,
    dry_run: bool = False,
    strict: bool = False,
) -> UploadResult:
    """Store an upload's good rows as manual readings in one ingest batch; the caller commits.

    Codes become meters in one query within the scope (others are unknown meters); every
    row not stored is reported with its row number and code. ``dry_run`` writes nothing
    and reports what would happen; ``strict`` writes nothing when any row has a problem.
    """
    zone = as_zone(tz)
    problems = list(upload.problems)
    codes = sorted({row.code for row in upload.rows})
    found = await session.execute(_METERS_BY_CODE, {"codes": codes, "patterns": _patterns(scope_patterns)}) if codes else None
    meters: dict[str, int] = {row.code: row.id for row in found.all()} if found is not None else {}
    readings: list[ReadingIn] = []
    row_numbers: list[int] = []
    for row in upload.rows:
        meter_id = meters.get(row.code)
        if meter_id is None:
            problems.append(RowProblem(row.row, ErrorCode.UNKNOWN_METER, f"表计编码不存在: {row.code}",
                                       f"Unknown meter code: {row.code}"))
            continue
        read_at = row.read_at if row.read_at.tzinfo is not None else row.read_at.replace(tzinfo=zone)
        readings.append(ReadingIn(meter_id=meter_id, read_at=read_at, total_m3=row.total_m3, quality=ReadingQuality.manual))
        row_numbers.append(row.row)
    result = IngestResult("", 0, 0, 0)
    written = False
    # A savepoint: a dry run or a refused strict upload is ingested for real (the exact
    # counts and rejections) and then rolled back, so nothing of it stays.
    savepoint = await session.begin_nested()
    try:
        if readings:
            result = await ingest_readings(session, readings=readings, source=f"{MANUAL_SOURCE}:{by}", now=now, tz=zone)
        problems.extend(_row_rejection(row_numbers[rejection.index], rejection) for rejection in result.rejected)
        written = bool(readings) and not dry_run and not (strict and problems)
    finally:
        if written:
            await savepoint.commit()
        else:
            await savepoint.rollback()
    problems.sort(key=lambda problem: problem.row)
    return UploadResult(result.inserted, result.replaced, result.duplicates, problems, written)


def _row_rejection(row: int, rejection: Rejection) -> RowProblem:
    return RowProblem(row, rejection.code, rejection.message, rejection.message_en)


def upload_template() -> bytes:
    """The upload template: both header rows, an example row and a notes sheet."""
    return excel.template(UPLOAD_SHEET)
