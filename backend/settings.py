"""Runtime configuration, read once from the environment (prefix ``SHUIWU_``).

Every setting has a documented default except the secrets a production deployment must
choose itself. A missing or malformed setting stops the process at start with one line
naming it (:func:`load_settings`), never a traceback deep inside a request.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names it in one line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHUIWU_", extra="ignore", frozen=True)

    # Absent: an embedded PostgreSQL under DATA_DIR/pgdata (pgserver).
    database_url: str | None = None
    data_dir: Path = Path(".shuiwu")
    # Absent: a random key is generated once and kept in DATA_DIR/secret_key, so a demo
    # needs no setup while tokens survive restarts. Production sets it explicitly.
    secret_key: SecretStr | None = None
    timezone: str = "Asia/Shanghai"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # A directory path or file:// URL by default (DATA_DIR/files); s3://… for several hosts.
    storage_url: str | None = None
    mqtt_url: str | None = None
    log_level: str = "INFO"
    log_json: bool = False

    # Tokens.
    access_token_ttl_s: int = Field(default=900, ge=30)
    refresh_token_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    # Staff login lockout: this many failures within the window lock the username.
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_s: int = Field(default=15 * 60, ge=1)
    otp_ttl_s: int = Field(default=300, ge=30)
    # "log" prints one-time codes to the log (development, demo); a real SMS gateway
    # adapter is selected here by name when one is added.
    sms_sender: str = "log"

    # GraphQL limits.
    graphql_max_depth: int = Field(default=15, ge=2)
    graphql_max_cost: int = Field(default=50_000, ge=100)
    graphql_max_tokens: int = Field(default=5_000, ge=100)
    graphql_cache_size: int = Field(default=512, ge=1)
    graphiql: bool = True

    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)

    # Database guards (issue 10): what one statement, one idle transaction and one
    # statement's temporary files may take on the API's connections (0: no limit) ...
    db_statement_timeout_s: float = Field(default=30, ge=0)
    db_idle_in_transaction_timeout_s: float = Field(default=60, ge=0)
    db_temp_file_limit_mb: int = Field(default=1024, ge=0)
    # ... and on the bulk paths: `shuiwu jobs`, demo load, partitions, readings exports.
    db_bulk_statement_timeout_s: float = Field(default=30 * 60, ge=0)
    db_bulk_idle_in_transaction_timeout_s: float = Field(default=10 * 60, ge=0)
    db_bulk_temp_file_limit_mb: int = Field(default=16 * 1024, ge=0)

    # Payment, push and bank gateways: filled in by the issues that use them.
    alipay_app_id: str | None = None
    alipay_private_key: SecretStr | None = None
    alipay_public_key: str | None = None
    alipay_gateway: str | None = None
    wechat_app_id: str | None = None
    wechat_mch_id: str | None = None
    wechat_api_key: SecretStr | None = None
    wechat_api_base: str | None = None
    jpush_app_key: str | None = None
    jpush_master_secret: SecretStr | None = None
    jpush_zone: str | None = None
    bank_url: str | None = None

    # Tests only: an external PostgreSQL the smoke subset also runs against.
    test_external_url: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("database_url", "test_external_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
            raise ValueError("must be a postgresql:// or postgresql+asyncpg:// URL")
        return value

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def pgdata_dir(self) -> Path:
        return self.data_dir / "pgdata"

    def secret(self) -> str:
        """The signing key: the configured one, else one kept in DATA_DIR/secret_key."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        key_file = self.data_dir / "secret_key"
        if not key_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                # Created 0600 from the start; O_EXCL: two processes starting at once keep one key.
                descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(secrets.token_urlsafe(48))
        key = key_file.read_text().strip()
        if len(key) < 32:
            # An empty or cut key would let anyone sign tokens: refuse to start.
            raise SettingsError(f"bad setting SHUIWU_SECRET_KEY: {key_file} holds fewer than 32 characters")
        return key


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation failure into one line naming the setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "SHUIWU_" + "_".join(str(part) for part in first["loc"]).upper()
        raise SettingsError(f"bad setting {name}: {first['msg']}") from None
