"""The merchants file (商户配置): which Alipay apps and WeChat Pay merchants the utility
takes money with, read from the TOML file ``SHUIWU_PAYMENTS_CONFIG`` names. Merchants are
configuration, not code; secrets are never written in it, only where to find them.

.. code-block:: toml

    public_base_url = "https://pay.example-water.cn"  # where the platforms call back (notify, return)
    order_expiry_minutes = 30      # an unpaid order is closed after this
    query_after_minutes = 2        # an unpaid order is asked about after this (the notify may never come)
    max_online_payment_fen = 5000000   # the largest single online payment (¥50,000)

    [[alipay]]
    name = "main"                  # stored on every order; unique within the channel
    app_id = "2021004100000000"
    private_key = { file = "keys/alipay_app_private.pem" }   # the app's RSA2 private key
    alipay_public_key = { file = "keys/alipay_public.pem" }  # Alipay's public key (公钥模式)

    [[wechat]]
    name = "main"
    api = "v3"                     # new merchants are v3-only; "v2" for older ones
    app_id = "wx8888888888888888"  # the 公众号 / 小程序 / app id the orders are made for
    mch_id = "1900000109"
    api_v3_key = { env = "WECHAT_API_V3_KEY" }               # 32 characters
    private_key = { file = "keys/apiclient_key.pem" }        # the merchant's API certificate key
    cert_serial_no = "444F4864EA9B34415..."                   # that certificate's serial number
    platform_public_key = { file = "keys/pub_key.pem" }      # WeChat Pay's public key (公钥模式)
    platform_public_key_id = "PUB_KEY_ID_0119000001..."
    app_secret = { env = "WECHAT_APP_SECRET" }               # the 公众号's secret, for snsapi_base (openid)

    [[wechat]]
    name = "legacy"
    api = "v2"
    app_id = "wx1234567890abcdef"
    mch_id = "1230000109"
    api_key = { env = "WECHAT_API_KEY" }                     # the 32-character API key
    sign_type = "MD5"              # or "HMAC-SHA256"
    app_secret = { env = "WECHAT_LEGACY_APP_SECRET" }
    client_cert = { file = "keys/apiclient_cert.pem" }       # the API client certificate, for refunds
    client_key = { file = "keys/apiclient_key.pem" }         # (v2's secapi: both or neither; files only)

A secret is ``{ env = "NAME" }`` (an environment variable) or ``{ file = "path" }`` (a
file, relative to the merchants file); a bare string is refused. The first merchant of a
channel is its default (``default = true`` on another picks that one). PEM keys may be
the console's bare base64: they are wrapped.

:func:`load_merchants` reads and validates the whole file and raises
:class:`MerchantsInvalid` with one line per mistake (``shuiwu check`` prints them; the
hosts refuse to start). Without ``SHUIWU_PAYMENTS_CONFIG`` there are no merchants: online
payment is off and creating an order is refused (PAYMENT_CHANNEL_UNAVAILABLE).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.payments.models import PaymentChannel
from backend.payments.online.models import GatewayApi

DEFAULT_ORDER_EXPIRY_MINUTES = 30
DEFAULT_QUERY_AFTER_MINUTES = 2
DEFAULT_MAX_ONLINE_PAYMENT_FEN = 5_000_000
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")


class MerchantsInvalid(ValueError):
    """The merchants file has mistakes: ``lines``, one per mistake, each naming where."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True, slots=True)
class AlipayMerchant:
    name: str
    app_id: str
    private_key: str  # PEM
    alipay_public_key: str  # PEM
    default: bool = False
    channel: PaymentChannel = PaymentChannel.alipay
    api: GatewayApi = GatewayApi.alipay


@dataclass(frozen=True, slots=True)
class WechatMerchant:
    name: str
    api: GatewayApi  # wechat_v2 | wechat_v3
    app_id: str
    mch_id: str
    app_secret: str | None = None  # web authorization (snsapi_base) for JSAPI's openid
    # v2
    api_key: str | None = None
    sign_type: str = "MD5"
    # The API client certificate and its key (apiclient_cert.pem / apiclient_key.pem), as
    # paths: v2's refunds (secapi) need them over TLS; wechatpy hands them to requests.
    client_cert: str | None = None
    client_key: str | None = None
    # v3
    api_v3_key: str | None = None
    private_key: str | None = None  # PEM
    cert_serial_no: str | None = None
    platform_public_key: str | None = None  # PEM
    platform_public_key_id: str | None = None
    default: bool = False
    channel: PaymentChannel = PaymentChannel.wechat


Merchant = AlipayMerchant | WechatMerchant


@dataclass(frozen=True, slots=True)
class Merchants:
    """Every merchant of the file and the settings beside them."""

    public_base_url: str = ""
    order_expiry_minutes: int = DEFAULT_ORDER_EXPIRY_MINUTES
    query_after_minutes: int = DEFAULT_QUERY_AFTER_MINUTES
    max_online_payment_fen: int = DEFAULT_MAX_ONLINE_PAYMENT_FEN
    alipay: tuple[AlipayMerchant, ...] = ()
    wechat: tuple[WechatMerchant, ...] = ()
    source: Path | None = field(default=None, compare=False)

    def of_channel(self, channel: PaymentChannel) -> tuple[Merchant, ...]:
        return self.alipay if channel is PaymentChannel.alipay else self.wechat if channel is PaymentChannel.wechat \
            else ()

    def default(self, channel: PaymentChannel) -> Merchant | None:
        """The channel's default merchant (None: the channel is not configured)."""
        merchants = self.of_channel(channel)
        return next((m for m in merchants if m.default), merchants[0] if merchants else None)

    def named(self, channel: PaymentChannel, name: str) -> Merchant | None:
        return next((m for m in self.of_channel(channel) if m.name == name), None)


NO_MERCHANTS = Merchants()


def pem(text: str, kind: str) -> str:
    """``text`` as PEM: a console's bare base64 is wrapped as ``kind`` ('PRIVATE KEY',
    'PUBLIC KEY')."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return stripped + "\n"
    body = "".join(stripped.split())
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----\n"


class _Reader:
    """Reads one table of the file, collecting mistakes instead of stopping at the first."""

    def __init__(self, table: Mapping[str, Any], where: str, base: Path, mistakes: list[str],
                 environ: Mapping[str, str]) -> None:
        self.table, self.where, self.base, self.mistakes, self.environ = table, where, base, mistakes, environ
        self.used: set[str] = set()

    def text(self, key: str, *, required: bool = True, default: str | None = None,
             pattern: re.Pattern[str] | None = None) -> str | None:
        self.used.add(key)
        value = self.table.get(key, default)
        if value is None:
            if required:
                self.mistakes.append(f"{self.where}: `{key}` is missing")
            return None
        if not isinstance(value, str) or not value.strip():
            self.mistakes.append(f"{self.where}: `{key}` must be a non-empty string")
            return None
        if pattern is not None and not pattern.match(value):
            self.mistakes.append(f"{self.where}: `{key}` = {value!r} is not valid")
            return None
        return value.strip()

    def secret(self, key: str, *, required: bool = True) -> str | None:
        self.used.add(key)
        ref = self.table.get(key)
        if ref is None:
            if required:
                self.mistakes.append(f"{self.where}: `{key}` is missing (write {{ env = \"NAME\" }} or "
                                     f"{{ file = \"path\" }})")
            return None
        if not isinstance(ref, dict) or set(ref) not in ({"env"}, {"file"}):
            self.mistakes.append(f"{self.where}: `{key}` must be {{ env = \"NAME\" }} or {{ file = \"path\" }}, "
                                 f"never the secret itself")
            return None
        if "env" in ref:
            value = self.environ.get(str(ref["env"]))
            if not value:
                self.mistakes.append(f"{self.where}: `{key}`: the environment variable {ref['env']} is not set")
                return None
            return value
        path = Path(str(ref["file"]))
        path = path if path.is_absolute() else self.base / path
        try:
            value = path.read_text(encoding="utf-8")
        except OSError as error:
            self.mistakes.append(f"{self.where}: `{key}`: cannot read {path}: {error.strerror or error}")
            return None
        if not value.strip():
            self.mistakes.append(f"{self.where}: `{key}`: {path} is empty")
            return None
        return value

    def pem_file(self, key: str, marker: str) -> str | None:
        """An optional ``{ file = "path" }`` holding a PEM block with ``marker``: the path
        (the SDK opens it itself, so an environment variable cannot stand in)."""
        self.used.add(key)
        ref = self.table.get(key)
        if ref is None:
            return None
        if not isinstance(ref, dict) or set(ref) != {"file"}:
            self.mistakes.append(f"{self.where}: `{key}` must be {{ file = \"path\" }}")
            return None
        path = Path(str(ref["file"]))
        path = path if path.is_absolute() else self.base / path
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            self.mistakes.append(f"{self.where}: `{key}`: cannot read {path}: {getattr(error, 'strerror', None) or error}")
            return None
        if f"-----BEGIN {marker}" not in value and not (marker == "PRIVATE KEY" and "PRIVATE KEY-----" in value):
            self.mistakes.append(f"{self.where}: `{key}`: {path} holds no PEM {marker}")
            return None
        return str(path)

    def flag(self, key: str) -> bool:
        self.used.add(key)
        value = self.table.get(key, False)
        if not isinstance(value, bool):
            self.mistakes.append(f"{self.where}: `{key}` must be true or false")
            return False
        return value

    def number(self, key: str, default: int, *, low: int, high: int) -> int:
        self.used.add(key)
        value = self.table.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.mistakes.append(f"{self.where}: `{key}` must be a whole number from {low} to {high}")
            return default
        return value

    def unknown(self, *, skip: frozenset[str] = frozenset()) -> None:
        for key in sorted(set(self.table) - self.used - skip):
            self.mistakes.append(f"{self.where}: unknown key `{key}`")


def _alipay(table: Any, where: str, base: Path, mistakes: list[str], environ: Mapping[str, str]) -> AlipayMerchant | None:
    if not isinstance(table, dict):
        mistakes.append(f"{where}: must be a table ([[alipay]])")
        return None
    read = _Reader(table, where, base, mistakes, environ)
    before = len(mistakes)
    name = read.text("name", pattern=_NAME)
    app_id = read.text("app_id", pattern=re.compile(r"^\d{16}$"))
    private_key = read.secret("private_key")
    public_key = read.secret("alipay_public_key")
    default = read.flag("default")
    read.unknown()
    if len(mistakes) > before or None in (name, app_id, private_key, public_key):
        return None
    assert name and app_id and private_key and public_key
    return AlipayMerchant(name=name, app_id=app_id, private_key=pem(private_key, "PRIVATE KEY"),
                          alipay_public_key=pem(public_key, "PUBLIC KEY"), default=default)


def _wechat(table: Any, where: str, base: Path, mistakes: list[str], environ: Mapping[str, str]) -> WechatMerchant | None:
    if not isinstance(table, dict):
        mistakes.append(f"{where}: must be a table ([[wechat]])")
        return None
    read = _Reader(table, where, base, mistakes, environ)
    before = len(mistakes)
    name = read.text("name", pattern=_NAME)
    version = read.text("api", default="v3")
    if version not in (None, "v2", "v3"):
        mistakes.append(f"{where}: `api` must be \"v2\" or \"v3\"")
    app_id = read.text("app_id", pattern=re.compile(r"^wx[0-9a-f]{16}$"))
    mch_id = read.text("mch_id", pattern=re.compile(r"^\d{8,10}$"))
    app_secret = read.secret("app_secret", required=False)
    default = read.flag("default")
    if version == "v2":
        api_key = read.secret("api_key")
        sign_type = read.text("sign_type", default="MD5")
        if sign_type not in (None, "MD5", "HMAC-SHA256"):
            mistakes.append(f"{where}: `sign_type` must be \"MD5\" or \"HMAC-SHA256\"")
        if api_key is not None and len(api_key.strip()) != 32:
            mistakes.append(f"{where}: `api_key` must be 32 characters")
        client_cert = read.pem_file("client_cert", "CERTIFICATE")
        client_key = read.pem_file("client_key", "PRIVATE KEY")
        if ("client_cert" in table) != ("client_key" in table):
            mistakes.append(f"{where}: `client_cert` and `client_key` go together (refunds need both)")
        read.unknown()
        if len(mistakes) > before:
            return None
        assert name and app_id and mch_id and api_key and sign_type
        return WechatMerchant(name=name, api=GatewayApi.wechat_v2, app_id=app_id, mch_id=mch_id, app_secret=app_secret,
                              api_key=api_key.strip(), sign_type=sign_type, client_cert=client_cert,
                              client_key=client_key, default=default)
    api_v3_key = read.secret("api_v3_key")
    private_key = read.secret("private_key")
    serial = read.text("cert_serial_no", pattern=re.compile(r"^[0-9A-Fa-f]{8,64}$"))
    platform_key = read.secret("platform_public_key")
    platform_key_id = read.text("platform_public_key_id")
    if api_v3_key is not None and len(api_v3_key.strip()) != 32:
        mistakes.append(f"{where}: `api_v3_key` must be 32 characters")
    read.unknown()
    if len(mistakes) > before:
        return None
    assert name and app_id and mch_id and api_v3_key and private_key and serial and platform_key and platform_key_id
    return WechatMerchant(name=name, api=GatewayApi.wechat_v3, app_id=app_id, mch_id=mch_id, app_secret=app_secret,
                          api_v3_key=api_v3_key.strip(), private_key=pem(private_key, "PRIVATE KEY"),
                          cert_serial_no=serial.upper(), platform_public_key=pem(platform_key, "PUBLIC KEY"),
                          platform_public_key_id=platform_key_id, default=default)


def load_merchants(path: Path | None, *, environ: Mapping[str, str] | None = None) -> Merchants:
    """The merchants of the file at ``path`` (none without one); raises
    :class:`MerchantsInvalid` listing every mistake."""
    if path is None:
        return NO_MERCHANTS
    environ = os.environ if environ is None else environ
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise MerchantsInvalid([f"{path}: cannot read it: {error.strerror or error}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise MerchantsInvalid([f"{path}: not valid TOML: {error}"]) from None
    mistakes: list[str] = []
    top = _Reader(document, str(path), path.parent, mistakes, environ)
    base_url = top.text("public_base_url", required=False, default="") or ""
    if base_url and not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", base_url):
        mistakes.append(f"{path}: `public_base_url` must be an http(s) URL")
    expiry = top.number("order_expiry_minutes", DEFAULT_ORDER_EXPIRY_MINUTES, low=1, high=24 * 60)
    query_after = top.number("query_after_minutes", DEFAULT_QUERY_AFTER_MINUTES, low=1, high=24 * 60)
    maximum = top.number("max_online_payment_fen", DEFAULT_MAX_ONLINE_PAYMENT_FEN, low=1, high=10**10)
    top.unknown(skip=frozenset({"alipay", "wechat", "bank"}))  # bank: the Bank channels issue's partners
    alipay: list[AlipayMerchant] = []
    wechat: list[WechatMerchant] = []
    for key, parse, into in (("alipay", _alipay, alipay), ("wechat", _wechat, wechat)):
        tables = document.get(key, [])
        if not isinstance(tables, list):
            mistakes.append(f"{path}: `{key}` must be an array of tables ([[{key}]])")
            continue
        for index, table in enumerate(tables):
            merchant = parse(table, f"{path}: [[{key}]] #{index + 1}", path.parent, mistakes, environ)
            if merchant is not None:
                into.append(merchant)  # type: ignore[arg-type]
        names = [m.name for m in into]
        for name in sorted({n for n in names if names.count(n) > 1}):
            mistakes.append(f"{path}: two [[{key}]] merchants are named {name!r}")
        if sum(m.default for m in into) > 1:
            mistakes.append(f"{path}: more than one [[{key}]] merchant says default = true")
    if (alipay or wechat) and not base_url:
        mistakes.append(f"{path}: `public_base_url` is missing (the platforms call back there)")
    if mistakes:
        raise MerchantsInvalid(mistakes)
    return Merchants(public_base_url=base_url.rstrip("/"), order_expiry_minutes=expiry,
                     query_after_minutes=query_after, max_online_payment_fen=maximum, alipay=tuple(alipay),
                     wechat=tuple(wechat), source=path)
