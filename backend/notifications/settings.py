"""Notifications' settings (``SHUIWU_NOTIFICATIONS_*``, offered as ``settings.notifications``)
and the JPush gateway's (``SHUIWU_JPUSH_*``, docs/notifications.md)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.gateways.settings import GatewaySettings

# The local fake's port (`shuiwu fake-gateway jpush`): the default URL, so the demo works offline.
# A port of its own: `demo run` serves every fake on its default port (Alipay's is 18940).
JPUSH_FAKE_URL = "http://127.0.0.1:18950"


class NotificationsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHUIWU_NOTIFICATIONS_", extra="ignore", frozen=True)

    # At most this many SMS to one household in one of the utility's days; more are
    # recorded as `capped` and not sent (the inbox and pushes still carry them).
    sms_daily_cap: int = Field(default=3, ge=0, le=100)
    # The vendor's approved notification template (Aliyun TemplateCode / Tencent TemplateId)
    # whose one parameter `content` is the message text. Needed when SHUIWU_SMS_SENDER is a
    # vendor; with `log` the text goes to the log.
    sms_template: str | None = None
    # An overdue postpaid account is reminded (欠费提醒) at most once in this many days.
    arrears_interval_days: int = Field(default=7, ge=1, le=90)


class JPushSettings(GatewaySettings):
    """The JPush REST API v3 (jpush SDK 3.4): its base URL, the app's key and master secret."""

    model_config = SettingsConfigDict(env_prefix="SHUIWU_JPUSH_", extra="ignore", frozen=True)

    # The base URL `/v3/push` is under. The real one is https://api.jpush.cn (zone DEFAULT)
    # or https://bjapi.push.jiguang.cn (zone BJ); default: the local fake.
    url: str = JPUSH_FAKE_URL
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    app_key: str = "fake-jpush-app-key"
    master_secret: SecretStr = SecretStr("fake-jpush-master-secret")
    # Pushes to iOS go to APNs production (True) or the development sandbox (False).
    apns_production: bool = False
