"""The ``sms`` gateway's settings (``SHUIWU_SMS_*``, docs/sms.md): which vendor sends the
residents' codes, its endpoint, credentials, signature and templates.

``SHUIWU_SMS_SENDER=log`` (the default) sends nothing and needs nothing. ``aliyun`` and
``tencent`` need their credentials, the approved signature (签名) and one approved
template per kind of code; a missing one stops the process at start with one line naming
it (``backend.domain.read_settings``), never an INTERNAL at a resident's first request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import SettingsConfigDict

from backend.gateways.settings import GatewaySettings

Sender = Literal["log", "aliyun", "tencent"]

# The vendors' public endpoints, used when SHUIWU_SMS_URL is not set.
ENDPOINTS: dict[str, str] = {"aliyun": "https://dysmsapi.aliyuncs.com", "tencent": "https://sms.tencentcloudapi.com"}
# Aliyun's SendSms is served from one region for the Chinese mainland.
ALIYUN_DEFAULT_REGION = "cn-hangzhou"
# What a binding code's template may be given besides the code itself.
BINDING_PARAMS = frozenset({"code", "account"})

# Which settings each real sender needs (in the order they are reported).
_NEEDED: dict[str, frozenset[str]] = {
    "aliyun": frozenset({"access_key_id", "access_key_secret", "sign_name", "login_template", "binding_template"}),
    "tencent": frozenset({"access_key_id", "access_key_secret", "sign_name", "login_template", "binding_template",
                          "sdk_app_id", "region"}),
}


class SmsSettings(GatewaySettings):
    """Who sends residents' login and binding codes, and with what."""

    model_config = SettingsConfigDict(env_prefix="SHUIWU_SMS_", extra="ignore", frozen=True)

    # Declared first: the fields below are checked against it.
    sender: Sender = "log"
    # Unset: the sender's public endpoint (ENDPOINTS); tests and a demo point it at the
    # local fake (`shuiwu fake-gateway sms`).
    url: str = ""
    # A resident waits for the answer: an SMS API answers in well under a second.
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Aliyun AccessKey ID / Tencent SecretId, and its secret (AccessKey secret / SecretKey).
    access_key_id: str | None = Field(default=None, validate_default=True)
    access_key_secret: SecretStr | None = Field(default=None, validate_default=True)
    # The approved signature (签名) shown as 【…】 before the text.
    sign_name: str | None = Field(default=None, validate_default=True)
    # The approved templates: Aliyun's TemplateCode (SMS_123456789), Tencent's TemplateId.
    login_template: str | None = Field(default=None, validate_default=True)
    binding_template: str | None = Field(default=None, validate_default=True)
    # Tencent only: the SMS application's SdkAppId (1400…) and the API region (ap-guangzhou).
    sdk_app_id: str | None = Field(default=None, validate_default=True)
    # Tencent: required; Aliyun: RegionId, cn-hangzhou when unset.
    region: str | None = Field(default=None, validate_default=True)
    # What the binding template is given, in this order (Tencent's {1}, {2}; Aliyun's
    # ${code}, ${account}): "code", or "code,account" when the text names the 缴费号.
    binding_params: str = "code"

    @model_validator(mode="before")
    @classmethod
    def _vendor_endpoint(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("url"):
            return {**data, "url": ENDPOINTS.get(str(data.get("sender", "log")), "")}
        return data

    @field_validator("access_key_id", "access_key_secret", "sign_name", "login_template", "binding_template",
                     "sdk_app_id", "region", mode="after")
    @classmethod
    def _needed_by_sender(cls, value: Any, info: ValidationInfo) -> Any:
        sender = info.data.get("sender")
        plain = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(plain, str):
            plain = plain.strip()
        if sender in _NEEDED and info.field_name in _NEEDED[sender] and not plain:
            # Not a ValueError: its message would read "Value error, must be set …".
            raise PydanticCustomError("needed_by_sender", "must be set when SHUIWU_SMS_SENDER={sender}", {"sender": sender})
        return value

    @field_validator("binding_params")
    @classmethod
    def _known_params(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = set(names) - BINDING_PARAMS
        if not names or unknown or names[0] != "code" or len(set(names)) != len(names):
            raise ValueError("must be `code` or `code,account`")
        return ",".join(names)

    @property
    def endpoint(self) -> str:
        """Where requests go, without a trailing slash."""
        return self.url.rstrip("/")

    @property
    def secret(self) -> str:
        return self.access_key_secret.get_secret_value() if self.access_key_secret is not None else ""

    def binding_param_names(self) -> tuple[str, ...]:
        return tuple(self.binding_params.split(","))
