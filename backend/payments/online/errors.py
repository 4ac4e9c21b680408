"""Online payments' refusals: each a stable code with a Chinese and an English message."""

from __future__ import annotations

from backend.errors import DomainError, ErrorCode


class PaymentChannelUnavailable(DomainError):
    code = ErrorCode.PAYMENT_CHANNEL_UNAVAILABLE
    message = "该支付方式未开通"
    message_en = "This payment channel is not configured"


class PaymentSceneUnsupported(DomainError):
    code = ErrorCode.PAYMENT_SCENE_UNSUPPORTED
    message = "该支付方式不支持此支付场景"
    message_en = "This channel does not offer that scene"


class PaymentOpenidRequired(DomainError):
    code = ErrorCode.PAYMENT_OPENID_REQUIRED
    message = "微信内支付需要付款人的 openid (请在微信中打开并授权)"
    message_en = "Paying inside WeChat needs the payer's openid (open the page in WeChat and authorize)"


class PaymentH5InWechat(DomainError):
    code = ErrorCode.PAYMENT_H5_IN_WECHAT
    message = "微信内不能使用 H5 支付, 请使用微信内支付"
    message_en = "H5 payment is refused inside WeChat's browser: pay by JSAPI"


class PaymentOnlineAboveMaximum(DomainError):
    code = ErrorCode.PAYMENT_ONLINE_ABOVE_MAXIMUM
    message = "超过单笔在线支付上限"
    message_en = "Above the largest single online payment"


class PaymentOrderClosed(DomainError):
    code = ErrorCode.PAYMENT_ORDER_CLOSED
    message = "订单已关闭"
    message_en = "The order is closed"


class PaymentOrderPaid(DomainError):
    code = ErrorCode.PAYMENT_ORDER_PAID
    message = "订单已支付"
    message_en = "The order is paid already"


class PaymentDeclined(DomainError):
    code = ErrorCode.PAYMENT_DECLINED
    message = "支付失败, 付款方未完成支付"
    message_en = "The payment was declined or not completed by the payer"


class PaymentCodeInvalid(DomainError):
    code = ErrorCode.PAYMENT_CODE_INVALID
    message = "付款码无效 (支付宝 25-30 开头, 微信 10-15 开头, 16-24 位数字)"
    message_en = "Not a valid payment code (Alipay starts 25-30, WeChat 10-15; 16-24 digits)"


class PaymentAccountNotPayable(DomainError):
    code = ErrorCode.PAYMENT_ACCOUNT_NOT_PAYABLE
    message = "该户不能在线缴费 (无开户账户或已销户)"
    message_en = "This household cannot be paid online (no open account)"


class RefundNotPossible(DomainError):
    code = ErrorCode.REFUND_NOT_POSSIBLE
    message = "无法原路退款"
    message_en = "The refund cannot go back through the original channel"


class RefundAboveRefundable(DomainError):
    code = ErrorCode.REFUND_ABOVE_REFUNDABLE
    message = "退款金额超过可退金额"
    message_en = "The refund is above what can be refunded"
