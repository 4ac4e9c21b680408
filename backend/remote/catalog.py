"""The command catalog (命令目录): per target kind, the commands a desk may send and each
parameter's name, type, unit and range (说明), so a desk renders the brochure's
名称 / 数据 / 单位 / 说明 form from it; and the one check of a command's parameters
(:func:`checked_params`) that ``queue_command`` applies.

Pure data and pure functions: no database, no clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from backend.remote.errors import CommandNotForTarget, ParamsInvalid
from backend.remote.models import CommandKind


class TargetKind(StrEnum):
    meter = "meter"  # 水表
    concentrator = "concentrator"  # 集中器


TARGET_TITLES = {TargetKind.meter: "水表", TargetKind.concentrator: "集中器"}


class ParamType(StrEnum):
    integer = "integer"
    decimal = "decimal"
    choice = "choice"
    # Any number of the choices (a list of their values; none given: the command's default).
    choices = "choices"
    date = "date"


class MeterParam(StrEnum):
    """What 读取参数 can read from a CJ/T 188 meter (``names`` of read_params)."""

    settlement_day = "settlement_day"  # 结算日, 8103
    reading_day = "reading_day"  # 抄表日, 8104
    price_table = "price_table"  # 价格表, 8102
    key_version = "key_version"  # 密钥版本号, 8106
    purchase = "purchase"  # 购入金额, 8105 (meters keeping their own balance)


METER_PARAM_TITLES = {
    MeterParam.settlement_day: "结算日",
    MeterParam.reading_day: "抄表日",
    MeterParam.price_table: "价格表",
    MeterParam.key_version: "密钥版本号",
    MeterParam.purchase: "购入金额",
}
# What a read_params without names reads: the parameters 设置参数 can write.
DEFAULT_READ = (MeterParam.settlement_day, MeterParam.reading_day, MeterParam.price_table)
# The price table (A010) is written whole: these six set_params parameters come together.
PRICE_TABLE_PARAMS = ("price_1_fen", "step_1_m3", "price_2_fen", "step_2_m3", "price_3_fen", "prices_from_day")


@dataclass(frozen=True, slots=True)
class Choice:
    value: str
    title: str


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a command: ``name`` is the key in ``params``; ``title`` the
    form's 名称, ``unit`` its 单位, ``description`` its 说明 (the range in words)."""

    name: str
    title: str
    type: ParamType
    unit: str = ""
    description: str = ""
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    choices: tuple[Choice, ...] = ()
    required: bool = True


@dataclass(frozen=True, slots=True)
class CommandSpec:
    kind: CommandKind
    title: str
    # The permission that sends it (backend.remote.domain's menus).
    permission: str
    params: tuple[Param, ...] = ()
    needs_valve: bool = False
    # set_params: at least one of its (optional) parameters.
    at_least_one: bool = False
    # Parameters given all together or not at all (the price table is one write).
    together: tuple[tuple[str, ...], ...] = ()
    # (lower, higher): when both are given, lower < higher (a price table's steps).
    ascending: tuple[tuple[str, str], ...] = ()


READ = "remote:read"
CONTROL = "remote:control"
PARAMS = "remote:params"
PURCHASE = "remote:purchase"


def _int(name: str, title: str, unit: str, low: int, high: int, *, required: bool = True) -> Param:
    return Param(name, title, ParamType.integer, unit, f"{low}-{high}", Decimal(low), Decimal(high), required=required)


_DAY = "日"
_PRICE = "分/m³"
_M3 = "m³"
# Six BCD digits: what a price (fen) or a step volume (m³) of A010 holds.
_MAX_BCD6 = 999_999
METER_COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(CommandKind.read_now, "实时抄表", READ),
    CommandSpec(CommandKind.backfill, "补抄历史数据", READ, (
        _int("months", "补抄月数", "月", 1, 12),
    )),
    CommandSpec(CommandKind.valve_open, "开阀", CONTROL, needs_valve=True),
    CommandSpec(CommandKind.valve_close, "关阀", CONTROL, needs_valve=True),
    CommandSpec(CommandKind.read_params, "读取参数", PARAMS, (
        Param("names", "读取项", ParamType.choices, "",
              "结算日 / 抄表日 / 价格表 / 密钥版本号 / 购入金额 (表端预付费); 不选: 结算日、抄表日、价格表",
              choices=tuple(Choice(name.value, title) for name, title in METER_PARAM_TITLES.items()), required=False),
    )),
    # CJ/T 188's parameters (A011, A012, A010), each read back by the same command.
    CommandSpec(CommandKind.set_params, "设置参数", PARAMS, (
        _int("settlement_day", "结算日", _DAY, 1, 28, required=False),
        _int("reading_day", "抄表日", _DAY, 1, 28, required=False),
        _int("price_1_fen", "一阶水价", _PRICE, 0, _MAX_BCD6, required=False),
        _int("step_1_m3", "一阶用量上限", _M3, 1, _MAX_BCD6, required=False),
        _int("price_2_fen", "二阶水价", _PRICE, 0, _MAX_BCD6, required=False),
        _int("step_2_m3", "二阶用量上限", _M3, 1, _MAX_BCD6, required=False),
        _int("price_3_fen", "三阶水价", _PRICE, 0, _MAX_BCD6, required=False),
        _int("prices_from_day", "价格启用日", _DAY, 1, 28, required=False),
    ), at_least_one=True, together=(PRICE_TABLE_PARAMS,), ascending=(("step_1_m3", "step_2_m3"),)),
    CommandSpec(CommandKind.sync_clock, "校时", PARAMS),
    CommandSpec(CommandKind.write_purchase, "写购水 (表端预付费)", PURCHASE, (
        _int("purchase_count", "购水次数", "次", 1, 65535),
        _int("amount_fen", "购水金额", "分", 1, 99_999_999),
    )),
)

CONCENTRATOR_COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(CommandKind.remote_switch, "远程遥控 (F1)", CONTROL, (
        _int("port", "遥控点端口号", "", 1, 16),
        Param("state", "遥控状态", ParamType.choice, "", "合 / 分",
              choices=(Choice("on", "合"), Choice("off", "分"))),
    )),
    CommandSpec(CommandKind.sync_clock, "校时", PARAMS),
    CommandSpec(CommandKind.download_meter_list, "下载表档案", PARAMS),
)

CATALOG: dict[TargetKind, tuple[CommandSpec, ...]] = {
    TargetKind.meter: METER_COMMANDS,
    TargetKind.concentrator: CONCENTRATOR_COMMANDS,
}


def spec_of(target: TargetKind, kind: CommandKind) -> CommandSpec:
    """The catalog's entry for ``kind`` sent to a ``target``; REMOTE_COMMAND_NOT_FOR_TARGET
    when the target kind has no such command."""
    for spec in CATALOG[target]:
        if spec.kind is kind:
            return spec
    raise CommandNotForTarget(kind.value, TARGET_TITLES[target])


def permission_of(kind: CommandKind) -> str:
    """The permission that sends ``kind`` (the same for every target kind)."""
    for specs in CATALOG.values():
        for spec in specs:
            if spec.kind is kind:
                return spec.permission
    raise ValueError(f"{kind} is in no catalog")


def _number(param: Param, value: Any) -> Decimal:
    # Booleans are ints in Python, floats lose digits: both refused.
    if isinstance(value, bool | float):
        raise ParamsInvalid(f"{param.title}须为数字", f"{param.name} must be a number", name=param.name)
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ParamsInvalid(f"{param.title}须为数字", f"{param.name} must be a number", name=param.name) from None
    if not number.is_finite():
        raise ParamsInvalid(f"{param.title}须为数字", f"{param.name} must be a number", name=param.name)
    if param.type is ParamType.integer and number != number.to_integral_value():
        raise ParamsInvalid(f"{param.title}须为整数", f"{param.name} must be a whole number", name=param.name)
    if (param.minimum is not None and number < param.minimum) or (param.maximum is not None and number > param.maximum):
        raise ParamsInvalid(f"{param.title}须在 {param.description} 之间", f"{param.name} must be {param.description}",
                            name=param.name)
    return number


def _checked_choices(param: Param, value: Any) -> list[str]:
    allowed = [choice.value for choice in param.choices]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) and item in allowed for item in value):
        raise ParamsInvalid(f"{param.title}须从 {'、'.join(c.title for c in param.choices)} 中选择",
                            f"{param.name} must be a list of {allowed}", name=param.name)
    return [item for item in allowed if item in value]  # each once, in the catalog's order


def _checked(param: Param, value: Any) -> Any:
    if param.type is ParamType.choices:
        return _checked_choices(param, value)
    if param.type is ParamType.integer:
        return int(_number(param, value))
    if param.type is ParamType.decimal:
        return str(_number(param, value))
    if param.type is ParamType.choice:
        allowed = [choice.value for choice in param.choices]
        if value not in allowed:
            raise ParamsInvalid(f"{param.title}须为 {param.description}", f"{param.name} must be one of {allowed}",
                                name=param.name)
        return value
    try:
        return dt.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise ParamsInvalid(f"{param.title}须为日期 (YYYY-MM-DD)", f"{param.name} must be a date",
                            name=param.name) from None


def checked_params(spec: CommandSpec, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` as stored (integers as ints, decimals as strings, dates ISO), checked
    against the catalog: no unknown name, every required one, each in its range."""
    given = dict(params or {})
    known = {param.name: param for param in spec.params}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ParamsInvalid(f"命令「{spec.title}」没有参数 {', '.join(unknown)}",
                            f"{spec.kind.value} has no parameter {', '.join(unknown)}", name=unknown[0])
    checked: dict[str, Any] = {}
    for param in spec.params:
        value = given.get(param.name)
        if value is None or value == "" or value == []:
            if param.required:
                raise ParamsInvalid(f"请填写{param.title}", f"{param.name} is required", name=param.name)
            continue
        checked[param.name] = _checked(param, value)
    if spec.at_least_one and not checked:
        raise ParamsInvalid("请至少设置一项参数", "Set at least one parameter")
    for group in spec.together:
        missing = [name for name in group if name not in checked]
        if len(missing) < len(group) and missing:
            titles = "、".join(known[name].title for name in group)
            raise ParamsInvalid(f"{titles}须一起设置, 缺{known[missing[0]].title}",
                                f"{', '.join(group)} go together: {missing[0]} is missing", name=missing[0])
    for lower, higher in spec.ascending:
        if lower in checked and higher in checked and not Decimal(checked[lower]) < Decimal(checked[higher]):
            raise ParamsInvalid(f"{known[higher].title}须大于{known[lower].title}",
                                f"{higher} must be above {lower}", name=higher)
    return checked
