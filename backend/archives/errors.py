"""Refusals of the archives domain."""

from __future__ import annotations

from backend.errors import DomainError, ErrorCode


class AreaKindOrder(DomainError):
    code = ErrorCode.INVALID
    message = "区域层级不正确: 公司 > 片区 > 小区 > 楼 > 单元"
    message_en = "Area levels must nest company > district > community > building > unit"


class DuplicateAccountNo(DomainError):
    code = ErrorCode.DUPLICATE
    message = "缴费号已存在"
    message_en = "This account number already exists"


class DuplicateAreaCode(DomainError):
    code = ErrorCode.DUPLICATE
    message = "区域编码已存在"
    message_en = "This area code already exists"


class DuplicateMeterAddress(DomainError):
    code = ErrorCode.DUPLICATE
    message = "该协议下表地址已存在"
    message_en = "A meter with this address already exists for this protocol"


class DuplicateMeterCode(DomainError):
    code = ErrorCode.DUPLICATE
    message = "表计编码已存在"
    message_en = "This meter code already exists"


class DuplicateConcentratorAddress(DomainError):
    code = ErrorCode.DUPLICATE
    message = "集中器地址 (行政区划码 + 终端地址) 已存在"
    message_en = "A concentrator with this region code and terminal address already exists"


class DuplicateCollectorAddress(DomainError):
    code = ErrorCode.DUPLICATE
    message = "该集中器下采集器地址已存在"
    message_en = "This collector address already exists on the concentrator"


class DuplicateMeterModel(DomainError):
    code = ErrorCode.DUPLICATE
    message = "该厂家的型号已存在"
    message_en = "This vendor already has a model with this name"


class InvalidAddress(DomainError):
    code = ErrorCode.INVALID_ADDRESS
    message = "表地址须为 14 位 BCD 数字"
    message_en = "A CJ/T 188 address is 14 BCD digits"


class InvalidPhone(DomainError):
    code = ErrorCode.INVALID_PHONE
    message = "电话号码格式不正确 (手机 11 位或固定电话)"
    message_en = "Malformed phone number (11-digit mobile or a landline)"


class InvalidIdNumber(DomainError):
    code = ErrorCode.INVALID_ID_NUMBER
    message = "身份证号格式不正确"
    message_en = "Malformed ID number"


class InvalidRoom(DomainError):
    code = ErrorCode.INVALID_ROOM
    message = "房间号为 1 到 16 位字母、数字或 -, 首尾不能是 -"
    message_en = "A room number is 1 to 16 letters, digits or -, not starting or ending with -"


class AreaNotEmpty(DomainError):
    code = ErrorCode.AREA_NOT_EMPTY
    message = "区域下仍有下级区域、住户、设备或授权, 不能删除"
    message_en = "The area still has child areas, households, devices or grants"


class AreaMoveInvalid(DomainError):
    code = ErrorCode.AREA_MOVE_INVALID
    message = "不能把区域移到它自己或它的下级之下"
    message_en = "An area cannot move under itself or its own subtree"


class MeterAlreadyAssigned(DomainError):
    code = ErrorCode.METER_ALREADY_ASSIGNED
    message = "该水表已分配给住户, 请先拆表或换表"
    message_en = "This meter already serves a household; end that assignment first"


class MeterNotAssigned(DomainError):
    code = ErrorCode.METER_NOT_ASSIGNED
    message = "该水表当前未分配给住户"
    message_en = "This meter serves no household now"


class MeterUnavailable(DomainError):
    code = ErrorCode.METER_UNAVAILABLE
    message = "该水表已报废、故障或为监测点, 不能分配给住户"
    message_en = "A retired or faulty meter, or a monitoring point, cannot serve a household"


class CrossAreaAssignment(DomainError):
    """A meter serves only households in its own area or below it (docs/security.md), so
    whoever's scope covers the meter covers the household it serves."""

    code = ErrorCode.CROSS_AREA_ASSIGNMENT
    message = "水表只能服务其所在区域 (含下级区域) 内的住户"
    message_en = "A meter may serve only a household in the meter's own area or an area below it"


class MetersStillAssigned(DomainError):
    code = ErrorCode.METERS_STILL_ASSIGNED
    message = "住户仍有在用水表, 请先拆表再销户"
    message_en = "The household still has meters; end their assignments before closing"


class HouseholdClosed(DomainError):
    code = ErrorCode.HOUSEHOLD_CLOSED
    message = "住户已销户"
    message_en = "The household is closed"


class BalanceOutstanding(DomainError):
    code = ErrorCode.BALANCE_OUTSTANDING
    message = "账户仍有余额或欠费, 结清后才能销户"
    message_en = "The account still has a balance or arrears; settle it before closing"


class HasHistory(DomainError):
    code = ErrorCode.HAS_HISTORY
    message = "已有历史记录, 不能删除; 请改为停用、销户或报废"
    message_en = "This record has history: retire or close it instead of deleting"


class DeviceInUse(DomainError):
    code = ErrorCode.DEVICE_IN_USE
    message = "设备下仍挂有采集器或水表, 不能删除"
    message_en = "Collectors or meters still hang under this device"


class ModelInUse(DomainError):
    code = ErrorCode.MODEL_IN_USE
    message = "已有读数的水表使用该型号, 不能修改倍率或计数器位数; 请新建型号"
    message_en = "Meters with readings use this model: its multiplier and register digits cannot change; create a new model"


class MeterHasReadings(DomainError):
    code = ErrorCode.METER_HAS_READINGS
    message = "该水表已有读数, 不能改为倍率或计数器位数不同的型号"
    message_en = "This meter has readings: it cannot change to a model with another multiplier or register size"


class MeterStateInvalid(DomainError):
    """A life-cycle step (安装 / 拆回 / 故障 / 修复) the meter's status or kind does not allow."""

    code = ErrorCode.METER_STATE_INVALID
    message = "水表当前状态不允许此操作"
    message_en = "The meter's status does not allow this step"


class DuplicateStationCode(DomainError):
    code = ErrorCode.DUPLICATE
    message = "监测站编码已存在"
    message_en = "This monitoring station code already exists"


class StationNotEmpty(DomainError):
    code = ErrorCode.STATION_NOT_EMPTY
    message = "监测站下仍有仪表, 请先移除仪表再删除"
    message_en = "Instruments still belong to this monitoring station; detach them before deleting it"


class NotAStationInstrument(DomainError):
    """Only a monitoring point that measures flow (``flow_monitor``) or pressure
    (``pressure_monitor``) belongs to a station: the measure follows the meter type."""

    code = ErrorCode.NOT_A_STATION_INSTRUMENT
    message = "只有流量或压力监测点可以加入监测站"
    message_en = "Only a flow or pressure monitoring point can belong to a monitoring station"


class InstrumentAreaFixed(DomainError):
    """A station's instruments stand where the station stands: they move with it."""

    code = ErrorCode.INSTRUMENT_AREA_FIXED
    message = "监测站仪表的区域随监测站变化, 请修改监测站的区域或先移除仪表"
    message_en = "A station instrument's area follows its station: change the station's area, or detach the instrument first"
