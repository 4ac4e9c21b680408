"""Billing's refusals (tariffs): each a stable code with a Chinese and an English message."""

from __future__ import annotations

from backend.errors import DomainError, ErrorCode


class TariffInvalid(DomainError):
    """A rule of the tariff file or form is malformed; ``field`` names it."""

    code = ErrorCode.TARIFF_INVALID
    message = "水价定义无效"
    message_en = "Invalid tariff definition"


class TariffTiersMismatch(DomainError):
    code = ErrorCode.TARIFF_TIERS_MISMATCH
    message = "阶梯数与价格数不符: 每个分项的价格数须为阶梯上限数加一"
    message_en = "Tiers and prices do not match: each component needs one price more than there are tier limits"


class TariffPricePlaces(DomainError):
    code = ErrorCode.TARIFF_PRICE_PLACES
    message = "单价须为非负数, 最多四位小数 (元/立方米)"
    message_en = "A price must be a non-negative decimal with at most four places (yuan/m³)"


class TariffMoneyPlaces(DomainError):
    code = ErrorCode.INVALID_MONEY
    message = "金额须为非负数, 最多两位小数"
    message_en = "An amount must be a non-negative decimal with at most two places"


class TariffVersionConflict(DomainError):
    code = ErrorCode.TARIFF_VERSION_CONFLICT
    message = "该水价版本已存在且内容不同; 调价请使用更晚的生效日期"
    message_en = "This tariff version exists with different content; a change needs a later valid_from"


class TariffNotInForce(DomainError):
    code = ErrorCode.TARIFF_NOT_IN_FORCE
    message = "该日期没有生效的水价版本"
    message_en = "No version of this tariff is in force on that date"
