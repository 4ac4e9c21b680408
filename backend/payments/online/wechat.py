"""WeChat Pay's parts shared by API v2 (``wechat_v2.py``) and v3 (``wechat_v3.py``): the
gateway's settings (``SHUIWU_WECHAT_*``), the statement (对账单) format, WeChat web
authorization for the payer's openid (``snsapi_base``), and which merchant a
notification is for.

The ``wechat`` gateway (``gateway.wechat``) serves every WeChat merchant of the merchants
file; :func:`wechat_gateway` builds the right client for one. Its endpoints default to
the local fake (``shuiwu fake-gateway wechat``); in production set
``SHUIWU_WECHAT_URL=https://api.mch.weixin.qq.com``,
``SHUIWU_WECHAT_OAUTH_URL=https://open.weixin.qq.com`` and
``SHUIWU_WECHAT_SNS_URL=https://api.weixin.qq.com``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import requests
import xmltodict
from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import SettingsConfigDict

from backend.gateways.errors import GatewayBadAnswer, GatewayRejected, GatewayUnavailable
from backend.gateways.settings import GatewaySettings
from backend.payments.online.gateway import OnlineGateway, StatementKind, StatementLine, TradeState
from backend.payments.online.merchants import WechatMerchant
from backend.payments.online.models import GatewayApi, OrderScene

# WeChat Pay speaks China time (+08:00) whatever the utility's zone.
CHINA = ZoneInfo("Asia/Shanghai")
# The local fake's address: the default of every endpoint, so the demo works offline.
FAKE_URL = "http://127.0.0.1:18962"
# What each scene is called in WeChat's protocols (v2 trade_type; v3 names the endpoint by it).
TRADE_TYPES: Mapping[OrderScene, str] = {
    OrderScene.app: "APP", OrderScene.h5: "MWEB", OrderScene.jsapi: "JSAPI", OrderScene.native: "NATIVE",
    OrderScene.barcode: "MICROPAY",
}
# trade_state (v2 and v3 alike) as the interface's states. REFUND: paid, then refunded.
TRADE_STATES: Mapping[str, TradeState] = {
    "SUCCESS": TradeState.paid, "REFUND": TradeState.paid, "NOTPAY": TradeState.waiting,
    "USERPAYING": TradeState.paying, "CLOSED": TradeState.closed, "REVOKED": TradeState.closed,
    "PAYERROR": TradeState.failed,
}
# A barcode payment's refusals that are the payer's (their code, their money): the payment
# is declined. Any other refusal (parameters, signature, permissions) is ours: an error.
BARCODE_DECLINED = frozenset({
    "AUTHCODEEXPIRE", "AUTH_CODE_ERROR", "AUTH_CODE_INVALID", "AUTH_CODE_EXPIRE", "NOTENOUGH", "NOT_ENOUGH",
    "NOTSUPORTCARD", "BUYER_MISMATCH", "TRADE_ERROR", "RULE_LIMIT", "PAYER_ACCOUNT_ABNORMAL", "PAYERROR",
})
# ... and those that mean "not finished, or already paid: query it" (ORDERPAID: a repeat of a
# payment that went through; USERPAYING: the payer is entering the password).
BARCODE_QUERY = frozenset({"USERPAYING", "ORDERPAID", "SYSTEMERROR", "SYSTEM_ERROR", "BANKERROR", "BANK_ERROR"})
_FEN = Decimal("0.01")
_YUAN = re.compile(r"[0-9]{1,12}(\.[0-9]{1,2})?", re.ASCII)  # fullmatch: no trailing newline


class WechatSettings(GatewaySettings):
    """The ``wechat`` gateway (``SHUIWU_WECHAT_*``): where WeChat Pay and WeChat's web
    authorization answer, the bounds of the calls, and the local fake's knobs. The
    merchants themselves (app ids, keys) are in the merchants file."""

    model_config = SettingsConfigDict(env_prefix="SHUIWU_WECHAT_", extra="ignore", frozen=True, populate_by_name=True)

    # WeChat Pay's API (v2 and v3 alike): https://api.mch.weixin.qq.com in production.
    url: str = FAKE_URL
    # Web authorization's page (https://open.weixin.qq.com) and its API (https://api.weixin.qq.com);
    # unset: the same as `url` (the fake serves both).
    oauth_url: str = ""
    sns_url: str = ""
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    # The fake only: the merchants file it learns the merchants from (default the app's,
    # SHUIWU_PAYMENTS_CONFIG), and WeChat Pay's private key it signs with (default
    # fake_wechat_platform_private.pem beside that file, as testkeys.write_test_merchants puts it).
    fake_merchants_file: Path | None = Field(default=None, validation_alias=AliasChoices(
        "SHUIWU_WECHAT_FAKE_MERCHANTS_FILE", "SHUIWU_PAYMENTS_CONFIG", "fake_merchants_file"))
    fake_private_key_file: Path | None = None
    # The fake only: notifications not answered success are sent again on WeChat's
    # schedule (15 s, 15 s, 30 s, 3 min, … 6 h) times this scale (tests: 0.001), if on.
    fake_notify_retries: bool = True
    fake_notify_retry_scale: float = Field(default=1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _endpoints_default_to_url(self) -> WechatSettings:
        for name in ("oauth_url", "sns_url"):
            if not getattr(self, name):
                object.__setattr__(self, name, self.url)
        return self

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/")


def wechat_gateway(merchant: WechatMerchant, settings: WechatSettings) -> OnlineGateway:
    """The client of one WeChat merchant, by the API it speaks."""
    if merchant.api is GatewayApi.wechat_v2:
        from backend.payments.online.wechat_v2 import WechatV2Gateway

        return WechatV2Gateway(merchant, settings)
    from backend.payments.online.wechat_v3 import WechatV3Gateway

    return WechatV3Gateway(merchant, settings)


def china_time(moment: datetime) -> datetime:
    return moment.astimezone(CHINA)


def parse_time(text: str | None) -> datetime | None:
    """v3's RFC 3339 (``2026-12-07T10:00:00+08:00``) or v2's ``20261207100000`` (China time)."""
    if not text:
        return None
    try:
        if re.fullmatch(r"\d{14}", text):
            return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=CHINA)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise GatewayBadAnswer(answer=text, detail=f"not a time: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=CHINA)


def fen_of(value: Any, *, what: str) -> int:
    """An integer fen amount (v2's ``total_fee`` text, v3's ``amount.total``), exactly."""
    if isinstance(value, bool):
        raise GatewayBadAnswer(answer=value, detail=f"{what} is not a whole number of fen")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,15}", value):
        return int(value)
    raise GatewayBadAnswer(answer=value, detail=f"{what} is not a whole number of fen: {value!r}")


def yuan_to_fen(text: str) -> int:
    """A statement's yuan amount (``12.34``) in fen, exactly: more places is a bad answer."""
    if not isinstance(text, str) or not _YUAN.fullmatch(text):
        raise GatewayBadAnswer(answer=text, detail=f"not a yuan amount: {text!r}")
    try:
        return int((Decimal(text) / _FEN).to_integral_exact())
    except InvalidOperation:  # pragma: no cover - the pattern admits only exact amounts
        raise GatewayBadAnswer(answer=text, detail=f"not a yuan amount: {text!r}") from None


def fen_to_yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


# --------------------------------------------------------------------------- statements

# The columns of a trade statement (交易账单, bill_type ALL), v2 and v3 alike; each field
# is written with a leading backtick so spreadsheets keep it as text.
BILL_COLUMNS = ("交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识",
                "交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号",
                "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包",
                "手续费", "费率", "订单金额", "申请退款金额", "费率备注")
BILL_SUMMARY = ("总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额",
                "申请退款总金额")


def parse_statement(text: str) -> list[StatementLine]:
    """The lines of a trade statement (CSV, the summary after the lines): payments
    (交易状态 SUCCESS) and refunds (REFUND, with the refund's numbers and amount)."""
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    if not rows or tuple(cell.strip() for cell in rows[0][:7]) != BILL_COLUMNS[:7]:
        raise GatewayBadAnswer(answer=text[:2000], detail="not a WeChat trade statement")
    header = [cell.strip() for cell in rows[0]]
    lines: list[StatementLine] = []
    for row in rows[1:]:
        if not row or row[0].strip() == BILL_SUMMARY[0]:
            break
        fields = dict(zip(header, (cell.strip().lstrip("`") for cell in row), strict=False))
        try:
            at = datetime.strptime(fields["交易时间"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
            status = fields["交易状态"]
            if status == "REFUND":
                lines.append(StatementLine(StatementKind.refund, fields["商户订单号"], fields["微信订单号"],
                                           yuan_to_fen(fields["退款金额"]), at, out_refund_no=fields["商户退款单号"]))
            elif status == "SUCCESS":
                lines.append(StatementLine(StatementKind.payment, fields["商户订单号"], fields["微信订单号"],
                                           yuan_to_fen(fields["应结订单金额"]), at))
        except (KeyError, ValueError) as error:
            raise GatewayBadAnswer(answer=",".join(row), detail=f"a statement line is malformed: {error}") from None
    return lines


def statement_text(lines: Iterable[Mapping[str, str]]) -> str:
    """A trade statement as WeChat writes it (the fake's), from rows by column name."""
    rows = list(lines)
    out = io.StringIO()
    out.write(",".join(BILL_COLUMNS) + "\r\n")
    for row in rows:
        out.write(",".join("`" + row.get(column, "") for column in BILL_COLUMNS) + "\r\n")
    paid = sum(yuan_to_fen(row["应结订单金额"]) for row in rows if row.get("交易状态") == "SUCCESS")
    refunded = sum(yuan_to_fen(row["退款金额"]) for row in rows if row.get("交易状态") == "REFUND")
    out.write(",".join(BILL_SUMMARY) + "\r\n")
    out.write(",".join("`" + value for value in (str(len(rows)), fen_to_yuan(paid), fen_to_yuan(refunded), "0.00",
                                                  "0.00", fen_to_yuan(paid), fen_to_yuan(refunded))) + "\r\n")
    return out.getvalue()


# --------------------------------------------------------------------------- web authorization


def authorize_url(settings: WechatSettings, merchant: WechatMerchant, *, redirect_uri: str, state: str = "") -> str:
    """Where to send a payer's browser inside WeChat for their openid (``snsapi_base``:
    silent, no consent page). WeChat redirects back to ``redirect_uri?code=…&state=…``."""
    query = urlencode({"appid": merchant.app_id, "redirect_uri": redirect_uri, "response_type": "code",
                       "scope": "snsapi_base", "state": state}, quote_via=quote)
    return f"{settings.oauth_url.rstrip('/')}/connect/oauth2/authorize?{query}#wechat_redirect"


def openid_for_code(settings: WechatSettings, merchant: WechatMerchant, code: str) -> str:
    """Exchange the ``code`` of :func:`authorize_url`'s redirect for the payer's openid
    under the merchant's app id. Blocks: run it through ``gateway.wechat``'s client
    (keep ``request={"appid": …, "code": …}``: the URL carries the app secret).
    A refused code (used, expired, another app's) is ``GatewayRejected``."""
    if not merchant.app_secret:
        raise GatewayRejected(detail=f"the WeChat merchant {merchant.name!r} has no app_secret for web authorization")
    response = requests.get(f"{settings.sns_url.rstrip('/')}/sns/oauth2/access_token",
                            params={"appid": merchant.app_id, "secret": merchant.app_secret, "code": code,
                                    "grant_type": "authorization_code"}, timeout=settings.timeout_s)
    if response.status_code >= 500:
        raise GatewayUnavailable(answer=response.text[:2000], detail=f"HTTP {response.status_code}")
    try:
        answer = response.json()
    except ValueError:
        raise GatewayBadAnswer(answer=response.text[:2000], detail="not JSON") from None
    if not isinstance(answer, dict):
        raise GatewayBadAnswer(answer=answer, detail="not a JSON object")
    if answer.get("errcode"):
        raise GatewayRejected(answer=answer, detail=f"{answer.get('errcode')} {answer.get('errmsg', '')}".strip())
    openid = answer.get("openid")
    if not isinstance(openid, str) or not openid:
        raise GatewayBadAnswer(answer=answer, detail="no openid")
    return openid


# --------------------------------------------------------------------------- notifications


def v2_notification_ids(body: bytes) -> tuple[str, str] | None:
    """(appid, mch_id) a v2 notification says it is for, before any verification (to pick
    the merchant whose key verifies it); None: not XML or no ids."""
    try:
        document = xmltodict.parse(body)
    except Exception:  # expat raises several kinds; any means "not XML"
        return None
    fields = document.get("xml") if isinstance(document, dict) else None
    if not isinstance(fields, dict):
        return None
    app_id, mch_id = fields.get("appid"), fields.get("mch_id")
    return (app_id, mch_id) if isinstance(app_id, str) and isinstance(mch_id, str) else None


def notification_merchants(merchants: Sequence[WechatMerchant], api: GatewayApi, headers: Mapping[str, str],
                           body: bytes) -> list[WechatMerchant]:
    """The merchants of ``api`` a notification posted to its route may be for, the likely
    one first: v2 by the body's mch_id; v3 (the body is encrypted) by the
    ``Wechatpay-Serial`` header naming the merchant's platform public key, then the rest.
    Try ``verify_notification`` with each until one does not reject it (or report the
    first one's reason)."""
    of_api = [merchant for merchant in merchants if merchant.api is api]
    if api is GatewayApi.wechat_v2:
        ids = v2_notification_ids(body)
        matching = [merchant for merchant in of_api if ids is not None and merchant.mch_id == ids[1]]
        return matching or of_api[:1]
    serial = {name.lower(): value for name, value in headers.items()}.get("wechatpay-serial", "")
    return sorted(of_api, key=lambda merchant: merchant.platform_public_key_id != serial)
