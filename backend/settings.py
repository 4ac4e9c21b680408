"""Runtime configuration, read once from the environment (prefix ``SHUIWU_``).

Every setting has a documented default except the secrets a production deployment must
choose itself. A missing or malformed setting stops the process at start with one line
naming it (:func:`load_settings`), never a traceback deep inside a request.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.edge import IPNetwork, parse_networks


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
    # A directory path or file:// URL by default (DATA_DIR/files); s3://… for several hosts
    # (backend.files.storage, docs/deploy.md): s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME].
    storage_url: str | None = None
    # S3 credentials; absent: botocore's own chain (AWS_* variables, ~/.aws, an instance role).
    storage_access_key_id: str | None = None
    storage_secret_access_key: SecretStr | None = None
    mqtt_url: str | None = None
    # A level name of Python's logging, any case ("info" is INFO).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_json: bool = False

    # Tokens.
    access_token_ttl_s: int = Field(default=900, ge=30)
    refresh_token_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    # Staff login lockout, per username AND source address (a stranger's guesses lock
    # only the stranger): this many failures lock for login_lockout_s, each further
    # failure doubles the lock, up to login_lockout_max_s; a count quiet that long restarts.
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_s: int = Field(default=60, ge=1)
    login_lockout_max_s: int = Field(default=3600, ge=1)
    otp_ttl_s: int = Field(default=300, ge=30)
    # Who sends residents' codes (SHUIWU_SMS_SENDER: log, aliyun, tencent) and with what
    # is the sms gateway's settings group (backend.auth.sms.settings, docs/sms.md).
    # At most this many SMS a day (the utility's day) for the whole installation, login
    # and binding codes together: a spend cap against SMS pumping (SMS_DAILY_CAP past it).
    sms_daily_cap: int = Field(default=2000, ge=1)

    # Auth abuse throttles (docs/security.md). In-process token buckets per API process
    # for anonymous requests (/graphql without a token, /oauth/token):
    anonymous_per_ip_per_minute: int = Field(default=300, ge=1)
    anonymous_per_minute: int = Field(default=3000, ge=1)
    # How many of an address's per-minute requests it may send at once (then the refill rate).
    anonymous_burst_per_ip: int = Field(default=30, ge=1)
    # An anonymous refusal is answered after this delay (a timer, no work on the loop).
    anonymous_refusal_delay_s: float = Field(default=1.0, ge=0, le=30)
    # Shared by every process (one PostgreSQL row per key and minute):
    login_attempts_per_ip_per_minute: int = Field(default=20, ge=1)
    sms_codes_per_ip_per_minute: int = Field(default=5, ge=1)
    sms_codes_per_minute: int = Field(default=60, ge=1)
    # Per phone over a rolling 24 hours: codes sent, and code attempts (right or wrong).
    sms_codes_per_phone_per_day: int = Field(default=10, ge=1)
    code_attempts_per_phone_per_day: int = Field(default=20, ge=1)

    # GraphQL limits.
    graphql_max_depth: int = Field(default=15, ge=2)
    graphql_max_cost: int = Field(default=50_000, ge=100)
    graphql_max_tokens: int = Field(default=5_000, ge=100)
    graphql_cache_size: int = Field(default=512, ge=1)
    # GraphQL gate (hardening): caps checked before execution, admission of expensive work,
    # and what strangers may see. GraphiQL and introspection are for logged-in callers
    # and the demo (`shuiwu demo run` turns both on).
    graphiql: bool = False
    introspection: Literal["authenticated", "all", "off"] = "authenticated"
    graphql_max_root_fields: int = Field(default=20, ge=1)
    graphql_max_fields: int = Field(default=500, ge=10)
    # Expensive requests (a field declared Expensive, or a cost of at least this) are
    # admitted this many at once per process (None: one per CPU core) and per caller.
    graphql_expensive_cost: int = Field(default=5_000, ge=1)
    graphql_expensive_per_process: int | None = Field(default=None, ge=1)
    graphql_expensive_per_principal: int = Field(default=1, ge=1)
    graphql_admission_wait_s: float = Field(default=10.0, ge=0)

    # HTTP edge (issue 10): bodies, uploads, imports, /metrics, proxies, headers, log size.
    # The largest body a route reads when it declares no limit of its own.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    graphql_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Excel/CSV imports (multipart): the body, then what a workbook may unpack to, the
    # largest inflated/packed ratio of one of its parts, every physical row, and the time.
    import_max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    import_max_unpacked_bytes: int = Field(default=100 * 1024 * 1024, ge=1024 * 1024)
    import_max_ratio: int = Field(default=100, ge=10)
    import_max_rows: int = Field(default=100_000, ge=10)
    import_time_budget_s: float = Field(default=60.0, gt=0)
    # Photo uploads (POST /files/photos, docs/files.md): the largest photo (the route's
    # body limit too, plus a multipart envelope), how long an unreferenced photo lives
    # before the purge, and how many one principal may upload a minute and a rolling day
    # (counted in PostgreSQL, shared by every process).
    files_max_photo_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    files_photo_claim_hours: int = Field(default=24, ge=1, le=24 * 30)
    files_photos_per_minute: int = Field(default=30, ge=1)
    files_photos_per_day: int = Field(default=500, ge=1)
    # /metrics: a bearer token, or a client address in this list (comma-separated IPs or
    # CIDR networks; loopback by default, empty: token only).
    metrics_token: SecretStr | None = None
    metrics_allowed_ips: str = "127.0.0.1,::1"
    # Proxies whose X-Forwarded-For is believed (comma-separated IPs or networks; none by default).
    trusted_proxies: str = ""
    # The deployment is served over HTTPS: responses carry Strict-Transport-Security.
    https: bool = False
    # Operation log entries older than this are purged by the purge_operation_log job.
    audit_retention_days: int = Field(default=365, ge=1)
    # Residents' personal data (docs/privacy.md, "Retention"): used or expired SMS login
    # codes are deleted this many days later (0: at the next hourly purge), by purge_expired_auth;
    retention_login_codes_days: int = Field(default=0, ge=0)
    # mobile numbers in operation-log entries older than this are masked (138****5678),
    # by purge_operation_log;
    retention_log_phones_days: int = Field(default=90, ge=1)
    # refused and ended household binding requests are deleted this long after their
    # decision, by purge_expired_auth (active ones stay while the binding lasts).
    retention_bindings_days: int = Field(default=365, ge=1)
    # Domain events older than this are purged (backend.events.retention): a
    # handler declared later can replay the past this far back (shuiwu events replay).
    event_retention_days: int = Field(default=400, ge=1)

    # GraphQL subscriptions over WebSocket (docs/subscriptions.md): open connections per
    # principal and process, operations per connection, messages a connection may have
    # waiting for its socket before it is cut off as too slow, events an operation may
    # have waiting (a burst of commits arrives at once), how often a connection's login
    # session is re-checked (a revoked one ends it), how long a new socket may take to
    # send connection_init, and how many stored events a resume (afterEventId) replays at
    # most (past it the client reloads through the list query: REPLAY_TOO_LONG).
    subscriptions_per_principal: int = Field(default=5, ge=1)
    subscriptions_operations_per_connection: int = Field(default=10, ge=1)
    subscriptions_queue_size: int = Field(default=100, ge=1)
    subscriptions_backlog: int = Field(default=1000, ge=1)
    subscriptions_auth_recheck_s: float = Field(default=30.0, gt=0)
    subscriptions_init_timeout_s: float = Field(default=10.0, gt=0)
    subscriptions_replay_max_events: int = Field(default=10_000, ge=1)

    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)

    # Database guards (issue 10): what one statement, one idle transaction and one
    # statement's temporary files may take on the API's connections (0: no limit) ...
    db_statement_timeout_s: float = Field(default=30, ge=0)
    db_idle_in_transaction_timeout_s: float = Field(default=60, ge=0)
    db_temp_file_limit_mb: int = Field(default=1024, ge=0)
    # Parallel workers one API statement may start (max_parallel_workers_per_gather;
    # PostgreSQL's default is 2). Admission runs one expensive request per core: a year of
    # statistics in parallel took every core and /healthz waited behind it (bench/abuse.py).
    db_parallel_workers_per_statement: int = Field(default=0, ge=0)
    # Admitted work (expensive requests, exports, imports) runs on pools of its own whose
    # PostgreSQL backends get this nice value when the database runs on this host as this
    # user (the embedded one): small requests' statements get a core first (0: off, no
    # extra pools). Nothing changes for a remote database. backend.db.lower_backend_priority.
    db_admitted_nice: int = Field(default=10, ge=0, le=19)
    # ... and on the bulk paths: `shuiwu jobs`, demo load, partitions, readings exports.
    db_bulk_statement_timeout_s: float = Field(default=30 * 60, ge=0)
    db_bulk_idle_in_transaction_timeout_s: float = Field(default=10 * 60, ge=0)
    db_bulk_temp_file_limit_mb: int = Field(default=16 * 1024, ge=0)

    # The bank gateway: filled in by the issue that uses it. Alipay apps and WeChat Pay
    # merchants are in the merchants file SHUIWU_PAYMENTS_CONFIG (backend.payments.settings);
    # JPush is the notifications domain's gateway (SHUIWU_JPUSH_*, backend.notifications.settings).
    bank_url: str | None = None

    # Tests only: an external PostgreSQL the smoke subset also runs against.
    test_external_url: str | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

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

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        parse_storage_url(value, data_dir=Path("."))  # ValueError names what is wrong
        return value

    @field_validator("metrics_allowed_ips", "trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)  # ValueError names the bad entry
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
    def trusted_proxy_networks(self) -> tuple[IPNetwork, ...]:
        return parse_networks(self.trusted_proxies)

    @property
    def metrics_networks(self) -> tuple[IPNetwork, ...]:
        return parse_networks(self.metrics_allowed_ips)

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


# --------------------------------------------------------------------------- SHUIWU_STORAGE_URL
# Parsed here, not in backend.files.storage (which builds the backend from it): settings
# import no package, and a malformed URL must stop the process when the settings load.

# The default S3 multipart part (S3's smallest is 5 MB).
S3_DEFAULT_PART_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StorageLocation:
    """What ``SHUIWU_STORAGE_URL`` says: a directory, or an S3 bucket and its options."""

    directory: Path | None = None
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    part_bytes: int = S3_DEFAULT_PART_BYTES


def parse_storage_url(url: str | None, *, data_dir: Path) -> StorageLocation:
    """Read a storage URL (``backend.files.storage``'s docstring, docs/files.md); ``ValueError``
    says what is wrong."""
    if url is None or not url.strip():
        return StorageLocation(directory=data_dir / "files")
    parts = urlsplit(url.strip())
    if parts.scheme in ("", "file"):
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            raise ValueError("a file:// storage URL names a local directory (file:///path)")
        path = unquote(parts.path) if parts.scheme == "file" else url.strip()
        if not path:
            raise ValueError("the storage directory is empty")
        return StorageLocation(directory=Path(path))
    if parts.scheme != "s3":
        raise ValueError("must be a directory, file:///path or s3://bucket/prefix")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", parts.netloc):
        raise ValueError("s3:// needs a bucket name (3-63 lower-case letters, digits, dots, hyphens)")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = set(query) - {"endpoint", "region", "part_size_mb"}
    if unknown:
        raise ValueError(f"unknown storage URL option(s): {', '.join(sorted(unknown))}")
    endpoint = query.get("endpoint")
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError("endpoint must be an http:// or https:// URL")
    part_bytes = S3_DEFAULT_PART_BYTES
    if "part_size_mb" in query:
        if not query["part_size_mb"].isdigit() or not 5 <= int(query["part_size_mb"]) <= 1024:
            raise ValueError("part_size_mb must be a whole number from 5 to 1024")
        part_bytes = int(query["part_size_mb"]) * 1024 * 1024
    return StorageLocation(bucket=parts.netloc, prefix=parts.path.strip("/"), endpoint_url=endpoint,
                           region=query.get("region"), part_bytes=part_bytes)



def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation failure into one line naming the setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "SHUIWU_" + "_".join(str(part) for part in first["loc"]).upper()
        raise SettingsError(f"bad setting {name}: {first['msg']}") from None
