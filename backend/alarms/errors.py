"""The alarm workflow's refusals."""

from __future__ import annotations

from backend.errors import DomainError, ErrorCode


class AlarmAlreadyClosed(DomainError):
    code = ErrorCode.ALARM_ALREADY_CLOSED
    message = "告警已关闭"
    message_en = "The alarm is already closed"


class AlarmAlreadyAcknowledged(DomainError):
    code = ErrorCode.ALARM_ALREADY_ACKNOWLEDGED
    message = "告警已确认"
    message_en = "The alarm is already acknowledged"
