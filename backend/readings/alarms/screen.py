"""The abnormal-meter screen (异常水表) in the readings screen registry: its columns and
the rows of its Excel export, filtered like ``meterAlarms`` (the same JSON filter keys:
``status``, ``kinds``, ``areaId``, ``meterId``, ``householdId``, ``openedFrom``,
``openedTo``) and read within the caller's scope."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from backend.alarms.models import KIND_LABELS, METER_KINDS, SEVERITY_LABELS, STATUS_LABELS, AlarmKind, AlarmSeverity, AlarmStatus
from backend.readings.alarms import service
from backend.readings.screens import (
    AREA_NAME_COLUMN,
    FOUR_PLACES_FORMAT,
    HOLDER_COLUMNS,
    TIME_FORMAT,
    ExportRequest,
    Screen,
    ScreenColumn,
    ScreenKind,
    filter_choices,
    filter_datetime,
    filter_id,
    register_screen,
)

ALARM_COLUMNS = (
    AREA_NAME_COLUMN,
    *HOLDER_COLUMNS,
    ScreenColumn("kind", "异常类型", "Kind", 12),
    ScreenColumn("severity", "级别", "Severity", 8),
    ScreenColumn("status", "状态", "Status", 10),
    ScreenColumn("value", "测量值", "Value", 12, FOUR_PLACES_FORMAT),
    ScreenColumn("threshold", "阈值", "Threshold", 12, FOUR_PLACES_FORMAT),
    ScreenColumn("detail", "说明", "Detail", 30),
    ScreenColumn("opened_at", "发生时间", "Opened at", 20, TIME_FORMAT),
    ScreenColumn("last_seen_at", "最近确认时间", "Last seen at", 20, TIME_FORMAT),
    ScreenColumn("acknowledged_at", "确认时间", "Acknowledged at", 20, TIME_FORMAT),
    ScreenColumn("acknowledged_by", "确认人", "Acknowledged by", 12),
    ScreenColumn("acknowledge_note", "确认备注", "Note", 20),
    ScreenColumn("closed_at", "关闭时间", "Closed at", 20, TIME_FORMAT),
    ScreenColumn("closed_by", "关闭人", "Closed by", 12),
    ScreenColumn("close_reason", "关闭原因", "Close reason", 20),
)
DEFAULT_COLUMNS = ("area_name", "household_name", "meter_name", "meter_code", "kind", "status", "value", "threshold",
                   "opened_at", "detail")
_TIMES = ("opened_at", "last_seen_at", "acknowledged_at", "closed_at")
_EVERY_ROW = 2**62  # the page query's limit for an export: every row


def alarm_filter_from(filters: Mapping[str, Any]) -> service.AlarmFilter:
    """The screen's JSON filter (GraphQL names and global ids) as a service filter."""
    return service.AlarmFilter(
        statuses=[AlarmStatus(s) for s in filter_choices(filters, "status", [s.value for s in AlarmStatus])] or None,
        kinds=[AlarmKind(k) for k in filter_choices(filters, "kinds", [k.value for k in METER_KINDS])] or None,
        area_id=filter_id(filters, "areaId", "Area"),
        meter_id=filter_id(filters, "meterId", "Meter"),
        household_id=filter_id(filters, "householdId", "Household"),
        opened_from=filter_datetime(filters, "openedFrom"),
        opened_to=filter_datetime(filters, "openedTo"),
    )


async def alarm_screen_rows(session: AsyncSession, request: ExportRequest) -> AsyncIterator[Mapping[str, Any]]:
    """Every alarm the list would page through, newest first, with Chinese labels and
    utility-local times. Residents have no alarm list: nothing for them."""
    where = alarm_filter_from(request.filters)
    if request.household_ids is not None:
        return
    patterns = request.scope_patterns if request.scope_patterns is not None else ["/%"]
    query = service.alarm_page_query(scope_patterns=patterns, where=where)
    zone = ZoneInfo(request.tz)
    result = await session.stream(query.rows.execution_options(yield_per=1000),
                                  {**query.params, "_offset": 0, "_limit": _EVERY_ROW})
    async for row in result.mappings():
        out = dict(row)
        out["kind"] = KIND_LABELS.get(AlarmKind(out["kind"]), out["kind"])
        out["status"] = STATUS_LABELS.get(AlarmStatus(out["status"]), out["status"])
        out["severity"] = SEVERITY_LABELS.get(AlarmSeverity(out["severity"]), out["severity"])
        for name in _TIMES:
            if out.get(name) is not None:
                out[name] = out[name].astimezone(zone)
        yield out


register_screen(Screen(ScreenKind.alarms, "异常水表", ALARM_COLUMNS, DEFAULT_COLUMNS, alarm_screen_rows, "alarms:read"))
