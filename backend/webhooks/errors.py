"""The webhooks' refusals (zh + en)."""

from __future__ import annotations

from backend.errors import DomainError, ErrorCode

# The address classes the SSRF guard names (backend.webhooks.ssrf.refusal_of), in Chinese.
_CLASSES_ZH = {
    "loopback": "本机回环", "private": "内网", "link-local": "链路本地", "multicast": "组播",
    "unspecified": "未指定", "metadata": "云元数据", "cgnat": "运营商级 NAT",
}


class WebhookUrlInvalid(DomainError):
    code = ErrorCode.WEBHOOK_URL_INVALID
    message = "推送地址须为 http(s) 绝对地址 (不含用户名密码与 #片段, 至多 2000 字符)"
    message_en = "A webhook URL is an absolute http(s) URL without credentials or fragment, at most 2000 characters"

    def __init__(self) -> None:
        super().__init__(field="url")


class WebhookHostUnresolved(DomainError):
    code = ErrorCode.WEBHOOK_HOST_UNRESOLVED
    message = "推送地址的主机名无法解析"
    message_en = "The webhook URL's host name does not resolve"

    def __init__(self) -> None:
        super().__init__(field="url")


class WebhookAddressRefused(DomainError):
    code = ErrorCode.WEBHOOK_ADDRESS_REFUSED
    message = "推送地址指向不允许的地址"
    message_en = "The webhook URL points at an address deliveries may not go to"

    @classmethod
    def of(cls, reason: str) -> WebhookAddressRefused:
        refused = cls(f"推送地址指向{_CLASSES_ZH.get(reason, reason)}地址, 不允许推送",
                      f"The webhook URL points at a {reason} address, which deliveries may not go to", field="url")
        refused.reason = reason
        return refused

    reason: str = "private"


class WebhookEventTypeInvalid(DomainError):
    code = ErrorCode.WEBHOOK_EVENT_TYPE_INVALID
    message = "事件类型须为可订阅的类型, 且第三方持有其查看权限"
    message_en = "Event types must be subscribable kinds whose read permission the client holds"

    def __init__(self, message: str | None = None, message_en: str | None = None) -> None:
        super().__init__(message, message_en, field="eventTypes")


class WebhookEndpointLimit(DomainError):
    code = ErrorCode.WEBHOOK_ENDPOINT_LIMIT
    message = "每个第三方至多登记 20 个推送地址"
    message_en = "A client registers at most 20 webhook endpoints"


class WebhookDeliveryPending(DomainError):
    code = ErrorCode.WEBHOOK_DELIVERY_PENDING
    message = "该推送仍在发送或等待重试, 不能重放"
    message_en = "The delivery is still being sent or awaits a retry; it cannot be replayed"
