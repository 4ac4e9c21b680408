"""Payments' refusals: each a stable code with a Chinese and an English message."""

from __future__ import annotations

from backend.errors import DomainError, ErrorCode


class PaymentAmountInvalid(DomainError):
    code = ErrorCode.PAYMENT_AMOUNT_INVALID
    message = "金额须大于零"
    message_en = "The amount must be above zero"


class PaymentAmountMismatch(DomainError):
    code = ErrorCode.PAYMENT_AMOUNT_MISMATCH
    message = "金额与确认金额不一致"
    message_en = "The amount and its confirmation differ"


class PaymentAboveMaximum(DomainError):
    code = ErrorCode.PAYMENT_ABOVE_MAXIMUM
    message = "超过单笔柜台收费上限"
    message_en = "Above the largest single counter payment"


class PaymentReferenceRequired(DomainError):
    code = ErrorCode.PAYMENT_REFERENCE_REQUIRED
    message = "该收费方式须填写参考号 (刷卡: POS 参考号; 转账: 转账流水号; 银行: 合作银行)"
    message_en = "This channel needs its reference (card: the POS reference; transfer: its serial; bank: the partner)"


class PaymentAlreadyReversed(DomainError):
    code = ErrorCode.PAYMENT_ALREADY_REVERSED
    message = "该笔收费已冲正"
    message_en = "This payment was already reversed"


class ReversalNotAllowed(DomainError):
    code = ErrorCode.REVERSAL_NOT_ALLOWED
    message = "只能冲正本人当日的收费; 其他冲正需要相应权限"
    message_en = "You may reverse only your own payments of today; others need the permission"


class CashierDayLocked(DomainError):
    code = ErrorCode.CASHIER_DAY_LOCKED
    message = "该收费员当日已日结, 不能再收费或冲正"
    message_en = "This cashier's day is handed over: no more payments or reversals on it"


class IdempotencyKeyReused(DomainError):
    code = ErrorCode.IDEMPOTENCY_CONFLICT
    message = "该幂等键已用于另一笔不同的收费"
    message_en = "This idempotency key was used for a different payment"


class CashierDayHandedOver(DomainError):
    code = ErrorCode.CASHIER_DAY_HANDED_OVER
    message = "该收费员当日已日结, 不能重复日结"
    message_en = "This cashier's day was already handed over"


class CashierDayUnbalanced(DomainError):
    code = ErrorCode.CASHIER_DAY_UNBALANCED
    message = "当日收费与账务分录不一致, 不能日结; 请联系管理员核查"
    message_en = "The day's takings differ from its ledger entries; it cannot be handed over (ask an administrator)"


class ReversalRefundedOnline(DomainError):
    code = ErrorCode.REVERSAL_NOT_ALLOWED
    message = "该笔收费已申请或完成原路退款, 不能冲正"
    message_en = "This payment has a refund through its original channel (requested or done): it cannot be reversed"


class ReversalWrittenToDevice(DomainError):
    code = ErrorCode.REVERSAL_NOT_ALLOWED
    message = "该笔充值已写入卡/表, 不能冲正"
    message_en = "This recharge was written to the card or meter already: it cannot be reversed"
