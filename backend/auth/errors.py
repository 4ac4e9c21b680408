"""Refusals of the auth domain."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any

from backend.errors import DomainError, ErrorCode, NotAuthenticated
from backend.gateways.errors import GatewayRejected


class InvalidCredentials(DomainError):
    code = ErrorCode.INVALID_CREDENTIALS
    message = "用户名或密码错误"
    message_en = "Wrong username or password"


class AccountLocked(DomainError):
    code = ErrorCode.ACCOUNT_LOCKED
    message = "登录失败次数过多, 请稍后再试"
    message_en = "Too many failed logins: try again later"

    @classmethod
    def until(cls, locked_until: datetime, *, now: datetime) -> AccountLocked:
        minutes = max(1, math.ceil((locked_until - now).total_seconds() / 60))
        return cls(f"登录失败次数过多, 请 {minutes} 分钟后再试",
                   f"Too many failed logins from here: try again in {minutes} minute{'s' if minutes > 1 else ''}")


class AccountInactive(DomainError):
    code = ErrorCode.ACCOUNT_INACTIVE
    message = "账号已停用"
    message_en = "This account is deactivated"


class TokenExpired(NotAuthenticated):
    message = "登录已过期, 请重新登录"
    message_en = "The token has expired; log in again"
    reason = ErrorCode.TOKEN_EXPIRED


class TokenInvalid(NotAuthenticated):
    message = "令牌无效"
    message_en = "The token is invalid"
    reason = ErrorCode.TOKEN_INVALID


class TokenRevoked(NotAuthenticated):
    message = "令牌已注销, 请重新登录"
    message_en = "The token was revoked; log in again"
    reason = ErrorCode.TOKEN_REVOKED


class RefreshTokenInvalid(DomainError):
    code = ErrorCode.TOKEN_INVALID
    message = "刷新令牌无效或已过期, 请重新登录"
    message_en = "The refresh token is invalid or expired; log in again"


class RefreshTokenReused(RefreshTokenInvalid):
    """A rotated-out refresh token came back; ``session_id`` is the login to revoke."""

    def __init__(self, *, session_id: uuid.UUID) -> None:
        super().__init__(field="refreshToken")
        self.session_id = session_id

    message = "刷新令牌已被使用过, 为安全起见已注销该登录, 请重新登录"
    message_en = "This refresh token was already used; the login was ended for safety: log in again"


class PasswordTooWeak(DomainError):
    code = ErrorCode.PASSWORD_TOO_WEAK
    message = "密码至少 8 位, 且须同时包含字母和数字"
    message_en = "A password needs at least 8 characters with both letters and digits"


class PasswordTooCommon(PasswordTooWeak):
    message = "密码过于常见, 请换一个"
    message_en = "This password is among the most common ones: choose another"


class InvalidCode(DomainError):
    code = ErrorCode.INVALID_CODE
    message = "验证码错误或已过期"
    message_en = "The code is wrong or has expired"


class CodeRateLimited(DomainError):
    code = ErrorCode.CODE_RATE_LIMITED
    message = "验证码发送过于频繁, 请 60 秒后再试"
    message_en = "A code was sent recently; try again in 60 seconds"


class CodeDailyLimit(DomainError):
    code = ErrorCode.CODE_DAILY_LIMIT
    message = "该手机号今日验证码发送次数已达上限, 请 24 小时后再试"
    message_en = "Too many codes were sent to this number today; try again in 24 hours"


class CodeAttemptsDailyLimit(CodeDailyLimit):
    message = "该手机号今日验证码尝试次数已达上限, 请 24 小时后再试"
    message_en = "Too many code attempts for this number today; try again in 24 hours"


class SmsDailyCapReached(DomainError):
    """This installation's SMS for the day (``SHUIWU_SMS_DAILY_CAP``) are spent: a spend
    cap against SMS pumping, which an operator raises or waits out until midnight."""

    code = ErrorCode.SMS_DAILY_CAP
    message = "今日短信发送量已达上限, 请明天再试, 或到营业厅办理"
    message_en = "Today's SMS allowance of this service is used up; try again tomorrow or visit the service counter"


class SmsRejected(GatewayRejected):
    """The SMS vendor refused the message (template, signature, balance, credentials):
    the code was not sent, and the installation has something to fix (the log says what)."""

    code = ErrorCode.SMS_NOT_SENT
    message = "短信发送失败, 请稍后再试, 或到营业厅办理"
    message_en = "The SMS could not be sent; try again later or visit the service counter"

    def __init__(self, *, answer: Any = None, detail: str | None = None, field: str | None = None) -> None:
        super().__init__(answer=answer, detail=detail)
        self.field = field


class SmsPhoneLimited(SmsRejected):
    """The vendor's own limit for this number (per minute, hour or day) refused it."""

    code = ErrorCode.SMS_PHONE_LIMITED
    message = "该手机号接收短信过于频繁, 请稍后再试"
    message_en = "This number has received too many messages; try again later"


class SmsInvalidPhone(SmsRejected):
    """The vendor will not send to this number (malformed, or on a do-not-disturb list)."""

    code = ErrorCode.INVALID_PHONE
    message = "短信平台无法向该手机号发送短信, 请核对号码"
    message_en = "Messages cannot be sent to this number; check it"

    def __init__(self, *, answer: Any = None, detail: str | None = None) -> None:
        super().__init__(answer=answer, detail=detail, field="phone")


class GrantExceedsOwn(DomainError):
    code = ErrorCode.GRANT_EXCEEDS_OWN
    message = "不能授予自己没有的权限或区域"
    message_en = "You cannot grant permissions or areas you do not hold"


class UnknownPermission(DomainError):
    code = ErrorCode.UNKNOWN_PERMISSION
    message = "未知的权限"
    message_en = "Unknown permission"


class UnknownArea(DomainError):
    code = ErrorCode.UNKNOWN_AREA
    message = "区域不存在"
    message_en = "Unknown area"


class RoleHierarchy(DomainError):
    code = ErrorCode.ROLE_HIERARCHY
    message = "角色不能高于或超出其上级角色"
    message_en = "A role cannot rank above or hold more than its parent role"


class RoleInUse(DomainError):
    code = ErrorCode.ROLE_IN_USE
    message = "角色仍有用户或下级角色, 不能删除"
    message_en = "The role still has users or child roles"


class HouseholdMismatch(DomainError):
    code = ErrorCode.HOUSEHOLD_MISMATCH
    message = "缴费号与户主姓名不匹配"
    message_en = "The account number and registered name do not match"


class AlreadyBound(DomainError):
    code = ErrorCode.ALREADY_BOUND
    message = "该住户已绑定"
    message_en = "This household is already bound"


class CannotDeactivateSelf(DomainError):
    code = ErrorCode.CANNOT_DEACTIVATE_SELF
    message = "不能停用或删除自己的账号"
    message_en = "You cannot deactivate or delete your own account"


class HasHistory(DomainError):
    code = ErrorCode.HAS_HISTORY
    message = "该用户已有操作记录, 只能停用不能删除"
    message_en = "This user has history: deactivate instead of deleting"


class Duplicate(DomainError):
    code = ErrorCode.DUPLICATE
    message = "名称已存在"
    message_en = "Already exists"
