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


# --------------------------------------------------------------------------- accounts and the ledger


class AccountExists(DomainError):
    code = ErrorCode.ACCOUNT_EXISTS
    message = "该住户已有未销户的账户"
    message_en = "This household already has an open account"


class NoAccount(DomainError):
    code = ErrorCode.NO_ACCOUNT
    message = "该住户尚未开户"
    message_en = "This household has no account; open one first"


class AccountClosed(DomainError):
    code = ErrorCode.ACCOUNT_CLOSED
    message = "账户已销户"
    message_en = "The account is closed"


class AccountUnsettled(DomainError):
    code = ErrorCode.ACCOUNT_UNSETTLED
    message = "账户有尚未结算的抄表数据, 请先结算 (出最终扣费) 再销户"
    message_en = "The account has readings not settled yet: make the final charge before closing"


class EntryAmountInvalid(DomainError):
    """An amount of the wrong sign for its kind, zero, or beyond any bill."""

    code = ErrorCode.ENTRY_AMOUNT_INVALID
    message = "金额无效: 须非零, 且方向与款项类型相符"
    message_en = "Invalid amount: it must be non-zero and have the sign its kind requires"


class IdempotencyConflict(DomainError):
    code = ErrorCode.IDEMPOTENCY_CONFLICT
    message = "该幂等键已用于另一笔不同的记账"
    message_en = "This idempotency key was used for a different entry"


# --------------------------------------------------------------------------- postpaid bills


class BillingPeriodNotEnded(DomainError):
    """A period is billed only once it has ended in the utility's zone."""

    code = ErrorCode.BILLING_PERIOD_NOT_ENDED
    message = "账期尚未结束, 不能出账"
    message_en = "The period has not ended yet; it cannot be billed"


class BillingPeriodMisaligned(DomainError):
    """A bimonthly area's period starts in its first month (1-2, 3-4, … or 2-3, 4-5, …)."""

    code = ErrorCode.BILLING_PERIOD_MISALIGNED
    message = "该片区为双月抄表, 账期须从其周期的首月开始"
    message_en = "This area is billed every two months; the period must start in the first month of its cycle"


class BillVoided(DomainError):
    code = ErrorCode.BILL_VOIDED
    message = "该账单已作废"
    message_en = "This bill has been voided"


class BillPaid(DomainError):
    """A bill with money allocated to it is voided only after that payment is reversed."""

    code = ErrorCode.BILL_PAID
    message = "该账单已有缴费, 请先冲正缴费再作废"
    message_en = "Money has been paid against this bill; reverse the payment before voiding it"


class BillNotLatest(DomainError):
    """Bills are voided newest first: a later bill was priced from this one's readings."""

    code = ErrorCode.BILL_NOT_LATEST
    message = "该账户有更晚的账单, 请先作废更晚的账单"
    message_en = "This account has a later bill; void the later bill first"


class LateFeeNothingToWaive(DomainError):
    code = ErrorCode.LATE_FEE_NOTHING_TO_WAIVE
    message = "该账单没有可减免的滞纳金"
    message_en = "This bill has no late fee to waive"
