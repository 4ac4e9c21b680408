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
