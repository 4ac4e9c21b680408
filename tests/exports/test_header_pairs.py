"""Every export's Chinese header and its English header say the same thing: the readings
screens' columns, the archives' sheets and the manual-reads upload sheet."""

from __future__ import annotations

import re

import pytest

from backend.archives import excel as archives_excel
from backend.exports.excel import SheetSpec
from backend.readings import entry
from backend.readings.screens import ScreenKind, get_screen

# Chinese header (unit stripped) -> the English headers that say the same (unit stripped).
# A header that means different things on different screens (单位名称: the room of a
# 实时数据 row, the area of a reading, the unit of a statistics row) lists each; a new
# header must be added here.
PAIRS: dict[str, set[str]] = {
    # who and where
    "单位名称": {"Room", "Area", "Unit"}, "上级单位": {"Parent area", "Parent unit"}, "区域": {"Area"},
    "所属区域": {"Area"}, "区域编码": {"Area code"}, "户号": {"Account no."}, "户名": {"Household", "Name"},
    "住户": {"Household"}, "住址": {"Address"}, "地址": {"Address"}, "房间号": {"Room"}, "名称": {"Name"}, "编码": {"Code"},
    "联系电话": {"Phone"}, "备用电话": {"Second phone"}, "证件号码": {"ID number"}, "用户类型": {"Customer type"},
    "用户子类": {"Sub-type"}, "人口数": {"Population"}, "状态": {"Status"},
    # the area tree
    "区域名称": {"Area name"}, "类型": {"Kind"}, "上级区域编码": {"Parent code"}, "区域全称": {"Full name"},
    # meters
    "表计名称": {"Meter name"}, "表计编码": {"Meter code"}, "监测点名称": {"Point"}, "通讯地址": {"Meter address"},
    "表地址": {"Address", "Meter address"}, "表计类别": {"Meter kind"}, "类别": {"Kind"}, "表类型": {"Meter type"},
    "协议": {"Protocol"}, "规约": {"Protocol"}, "厂家": {"Vendor"}, "型号": {"Model"}, "安装日期": {"Install date"},
    "初始读数": {"Initial reading"}, "安装位置": {"Location"}, "集中器地址": {"Concentrator"},
    "采集器地址": {"Collector"}, "端口": {"Port"}, "测量点号": {"Measurement point"}, "MQTT主题": {"MQTT topic"},
    # concentrators
    "行政区划码": {"Region code"}, "终端地址": {"Terminal address"}, "连接方式": {"Connection"},
    "串口地址": {"Serial URL"}, "波特率": {"Baud rate"}, "校验位": {"Parity"}, "数据位": {"Byte size"},
    "停止位": {"Stop bits"}, "主机": {"Host"}, "终端密码": {"Terminal password"},
    # assignments
    "起始时间": {"Valid from"}, "结束时间": {"Valid to"}, "起始读数": {"Start reading"}, "结束读数": {"End reading"},
    # readings: 累积流量 is the register in tonnes (= m³), 数据质量 the reading's quality
    # (实抄 / 手工 / 估算), 采集来源 where it came from.
    "累积流量": {"Total"}, "累计读数": {"Total m3"}, "抄表时间": {"Read at"}, "瞬时流量": {"Flow rate"},
    "压力": {"Pressure"}, "阀门状态": {"Valve"}, "电池电压": {"Battery"}, "状态字": {"Status bits"},
    "数据质量": {"Quality"}, "采集来源": {"Source"}, "接收时间": {"Received at"}, "在线状态": {"Online"},
    # analytics
    "日期": {"Period"}, "期间": {"Period"}, "用水量": {"Usage"}, "统计值": {"Usage"}, "起码时间": {"Start time"},
    "止码时间": {"End time"}, "倍率": {"Multiplier"}, "起码": {"Start reading"}, "止码": {"End reading"},
    "本期用水量": {"Current"}, "对比期用水量": {"Previous"}, "变化量": {"Change"}, "变化率": {"Change"},
    "Z 值": {"z-score"}, "异常": {"Outlier"},
    # hourly figures' coverage
    "表数": {"Meters"}, "覆盖表数": {"Covered meters"}, "覆盖率": {"Coverage"},
    # alarms
    "异常类型": {"Kind"}, "级别": {"Severity"}, "测量值": {"Value"}, "阈值": {"Threshold"}, "说明": {"Detail"},
    "发生时间": {"Opened at"}, "最近确认时间": {"Last seen at"}, "确认时间": {"Acknowledged at"},
    "确认人": {"Acknowledged by"}, "确认备注": {"Note"}, "关闭时间": {"Closed at"}, "关闭人": {"Closed by"},
    "关闭原因": {"Close reason"},
}

_UNIT = re.compile(r"\s*[(（]([^)）]*)[)）]\s*$")


def _split(header: str) -> tuple[str, str | None]:
    """``"累积流量(t)"`` -> ``("累积流量", "t")``; full-width parentheses count too."""
    found = _UNIT.search(header)
    return (header[:found.start()], found.group(1).strip()) if found else (header.strip(), None)


def _all_headers() -> list[tuple[str, str, str]]:
    """(where, Chinese header, English header) of every export's columns."""
    headers = [(f"screen {kind.value}", column.title, column.title_en)
               for kind in ScreenKind for column in get_screen(kind).columns]
    sheets = [value for value in vars(archives_excel).values() if isinstance(value, SheetSpec)]
    sheets.append(entry.UPLOAD_SHEET)
    headers += [(f"sheet {sheet.name}", column.header, column.header_en) for sheet in sheets for column in sheet.columns]
    return headers


def test_every_registered_screen_and_archives_sheet_is_walked() -> None:
    where = {place for place, _, _ in _all_headers()}

    assert {f"screen {kind.value}" for kind in ScreenKind} <= where
    assert len([place for place in where if place.startswith("sheet ")]) >= 5  # households (2), meters, concentrators, assignments


@pytest.mark.parametrize(("where", "title", "title_en"), _all_headers())
def test_chinese_and_english_headers_say_the_same(where: str, title: str, title_en: str) -> None:
    name, unit = _split(title)
    name_en, unit_en = _split(title_en)

    assert unit == unit_en, f"{where}: {title!r} and {title_en!r} give different units"
    assert name in PAIRS, f"{where}: {title!r} is not in the table of header pairs"
    assert name_en in PAIRS[name], f"{where}: {title!r} is paired with {title_en!r}, expected one of {PAIRS[name]}"


def test_the_unit_check_catches_the_old_total_pair() -> None:
    assert _split("累积流量(t)")[1] != _split("Total (m³)")[1]
    assert _split("用水量（m³）") == ("用水量", "m³")
