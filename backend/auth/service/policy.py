"""What callers pass in and get back: the :class:`AuthPolicy` (the station secret, lifetimes,
the lockout and the throttles), the SMS sender, and the :class:`TokenPair` a login returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from backend.auth.principal import Principal


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """The station secret (each use derives its own key from it, ``security.derive_key``),
    lifetimes, the lockout and the throttles. Built with :meth:`from_settings`: no
    defaults of its own, so none can drift from the settings' defaults."""

    secret: str
    access_ttl_s: int
    refresh_ttl_s: int
    max_failures: int
    lockout_s: int
    lockout_max_s: int
    otp_ttl_s: int
    login_attempts_per_ip_per_minute: int
    sms_codes_per_ip_per_minute: int
    sms_codes_per_minute: int
    sms_codes_per_phone_per_day: int
    code_attempts_per_phone_per_day: int
    sms_daily_cap: int
    # The utility's zone: its days are the daily SMS cap's days.
    tz: ZoneInfo

    @classmethod
    def from_settings(cls, settings: Any) -> AuthPolicy:
        return cls(
            secret=settings.secret(),
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
            max_failures=settings.login_max_failures,
            lockout_s=settings.login_lockout_s,
            lockout_max_s=settings.login_lockout_max_s,
            otp_ttl_s=settings.otp_ttl_s,
            login_attempts_per_ip_per_minute=settings.login_attempts_per_ip_per_minute,
            sms_codes_per_ip_per_minute=settings.sms_codes_per_ip_per_minute,
            sms_codes_per_minute=settings.sms_codes_per_minute,
            sms_codes_per_phone_per_day=settings.sms_codes_per_phone_per_day,
            code_attempts_per_phone_per_day=settings.code_attempts_per_phone_per_day,
            sms_daily_cap=settings.sms_daily_cap,
            tz=settings.tz,
        )

    def lock_length(self, failures: int) -> timedelta:
        """How long ``failures`` failures from one source lock it: ``lockout_s`` at
        ``max_failures``, doubling with each further failure, never above ``lockout_max_s``."""
        doublings = min(failures - self.max_failures, 30)
        return timedelta(seconds=min(self.lockout_s * 2**doublings, self.lockout_max_s))


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    access_expires_at: datetime
    refresh_token: str | None
    refresh_expires_at: datetime | None
    principal: Principal


class SmsSender(Protocol):
    async def send_login_code(self, phone: str, code: str) -> None: ...

    async def send_binding_code(self, phone: str, code: str, account_no: str) -> None:
        """A code for the holder of a household's registered phone, who passes it on only
        to someone they agree may see the household (a tenant, family)."""
        ...
