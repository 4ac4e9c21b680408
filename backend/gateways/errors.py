"""The typed failures of a gateway call, each an ``ErrorCode`` (docs/gateways.md).

A call either returns the remote's answer or raises one of these; a caller never waits
longer than the gateway's timeout. Whether it is worth trying again is the class's
``retryable``: a timeout, a full pool or an unreachable remote are; a refusal or an
answer that fails its signature are not (the same request would fail the same way).
"""

from __future__ import annotations

from typing import Any

from backend.errors import DomainError, ErrorCode


class GatewayError(DomainError):
    """A gateway call that did not give an answer to act on. ``answer`` is what the
    remote sent, when it sent something (kept with the exchange)."""

    code = ErrorCode.GATEWAY_UNAVAILABLE
    message = "外部服务暂时不可用, 请稍后再试"
    message_en = "The outside service is unavailable; try again later"
    retryable: bool = True
    # The exchange's status word (gateway_exchanges.status).
    status: str = "unavailable"
    # Whether the remote may have acted on the request although no answer came back (the
    # request went out): a caller must not act as if it surely did not (an SMS code).
    maybe_done: bool = False

    def __init__(self, message: str | None = None, message_en: str | None = None, *, answer: Any = None,
                 detail: str | None = None, maybe_done: bool | None = None) -> None:
        super().__init__(message, message_en)
        self.answer = answer
        if maybe_done is not None:
            self.maybe_done = maybe_done
        # For the log and the exchange, never shown to a user.
        self.detail = detail


class GatewayUnavailable(GatewayError):
    """The remote could not be reached, or answered with a server error."""


class GatewayTimeout(GatewayError):
    """The call ran past the gateway's timeout; the remote may still have acted on it."""

    code = ErrorCode.GATEWAY_TIMEOUT
    message = "外部服务响应超时, 请稍后查询结果"
    message_en = "The outside service did not answer in time; check the outcome later"
    status = "timeout"
    maybe_done = True


class GatewayBusy(GatewayError):
    """Every thread of the gateway is taken and its wait queue is full, or no thread
    freed up within the timeout: refused without calling the remote."""

    code = ErrorCode.GATEWAY_BUSY
    message = "外部服务繁忙, 请稍后再试"
    message_en = "The outside service is busy; try again later"
    status = "busy"


class GatewayRejected(GatewayError):
    """The remote answered, correctly signed, and refused the request."""

    code = ErrorCode.GATEWAY_REJECTED
    message = "外部服务拒绝了请求"
    message_en = "The outside service refused the request"
    retryable = False
    status = "rejected"


class GatewayBadAnswer(GatewayError):
    """The answer failed its signature or is not what the protocol says: not acted on."""

    code = ErrorCode.GATEWAY_BAD_ANSWER
    message = "外部服务的应答无效 (签名或格式错误)"
    message_en = "The outside service's answer is invalid (bad signature or format)"
    retryable = False
    status = "bad_answer"
