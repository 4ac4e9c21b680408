"""The payer's pages (H5, server-rendered): paying for an account number without login,
the static QR sticker's landing page, WeChat web authorization for the openid, and the
result page. Routes: :mod:`backend.payments.online.payer.http`; this module holds what
they decide and draw, with no HTTP framework in it.

**Who is paid.** ``/pay/a/{缴费号}`` names the household by its account number (the number
on its bills and notices); ``/pay/s/{token}`` by a **static QR token**: the household id in
base 36, a dot, and the first 16 bytes of HMAC-SHA256 under the server's secret key
(``SHUIWU_SECRET_KEY``, label ``shuiwu static-qr v1``) in base64url. A token cannot be
guessed or walked (the MAC is 128 bits) and needs no table; a sticker stays valid while
the secret key does — rotating ``SHUIWU_SECRET_KEY`` voids every printed sticker (reprint
them: ``/payments/static-qr.pdf``).

**What is shown** (:class:`Payee`): the masked name (张*三: the first and last characters
of three or more, the first of two), the masked address (its first third and last two
characters), and what is due: for a postpaid account its open bills, principal plus the
late fee as read today, less the money on the account no bill took yet
(``backend.billing.allocations``: balance + posted unpaid); for a prepaid account its
balance (and nothing due). A household without an open account cannot be paid
(PAYMENT_ACCOUNT_NOT_PAYABLE).

**The amount** (:func:`parse_amount`) is a yuan string with at most two places, above
zero and at most the merchants file's ``max_online_payment_fen``, with a clear Chinese
message for each refusal. A postpaid account's payment pays bills (purpose ``bills``),
any other mode's is a recharge.

**Where it goes** (:func:`browser_of`, by user agent): inside WeChat (``MicroMessenger``)
only WeChat Pay is offered, by JSAPI: the page first sends the payer through WeChat's web
authorization (``snsapi_base``, silent) whose ``state`` carries the signed pay intent
(:func:`sign_intent`: household, amount, origin, 10 minutes), and the callback exchanges
the code for the openid and opens a JSAPI order; inside Alipay (``AlipayClient``) only
Alipay, by WAP; any other browser chooses (Alipay WAP or WeChat H5).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.service.rooms import unit_name_sql
from backend.billing.late_fees import BILL_STATE_COLUMNS, LateFeeState, owed_on
from backend.errors import DomainError, ErrorCode
from backend.money import fen_to_yuan
from backend.payments.models import PaymentChannel, PaymentPurpose
from backend.payments.online.gateway import ClientPayload, PayloadKind
from backend.payments.online.models import OrderOrigin, OrderScene, OrderState

STATIC_QR_LABEL = b"shuiwu static-qr v1"
INTENT_LABEL = b"shuiwu pay-intent v1"
INTENT_TTL = timedelta(minutes=10)
MAX_ACCOUNT_NO = 32  # households.account_no
_TOKEN = re.compile(r"^([0-9a-z]{1,13})\.([A-Za-z0-9_-]{22})$")
_AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,9})(?:\.([0-9]+))?$", re.ASCII)


# --------------------------------------------------------------------------- masks


def mask_name(name: str) -> str:
    """张*三: the first and last characters, the middle starred (at most three stars); a
    name of two characters keeps its first (李*)."""
    name = name.strip()
    if len(name) <= 1:
        return name or "*"
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * min(3, len(name) - 2) + name[-1]


def mask_address(address: str) -> str:
    """翠湖小区****01: the first third of the address (at most 8 characters) and its last
    two, the middle starred, so a payer recognises their place and a stranger learns
    little more than the community."""
    address = address.strip()
    if len(address) <= 4:
        return "*" * len(address)
    head = min(8, len(address) // 3)
    return address[:head] + "****" + address[-2:]


# --------------------------------------------------------------------------- tokens


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def _mac(secret: str, label: bytes, message: bytes, size: int = 16) -> bytes:
    return hmac.new(secret.encode(), label + b"\x00" + message, hashlib.sha256).digest()[:size]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def static_qr_token(secret: str, household_id: int) -> str:
    """The sticker's token of a household (module docstring)."""
    return f"{_b36(household_id)}.{_b64(_mac(secret, STATIC_QR_LABEL, str(household_id).encode()))}"


def household_of_token(secret: str, token: str) -> int | None:
    """The household a sticker's token names, or None for anything not made by
    :func:`static_qr_token` under ``secret``."""
    match = _TOKEN.match(token)
    if match is None:
        return None
    household_id = int(match.group(1), 36)
    expected = static_qr_token(secret, household_id)
    return household_id if hmac.compare_digest(expected, token) else None


@dataclass(frozen=True, slots=True)
class PayIntent:
    """What a payer asked for before WeChat's web authorization: carried, signed, in its
    ``state`` (WeChat allows 128 characters)."""

    household_id: int
    amount_fen: int
    origin: OrderOrigin
    expires_at: int  # unix seconds


def sign_intent(secret: str, intent: PayIntent) -> str:
    body = f"{_b36(intent.household_id)}.{_b36(intent.amount_fen)}.{intent.origin.value[0]}.{_b36(intent.expires_at)}"
    return f"{body}.{_b64(_mac(secret, INTENT_LABEL, body.encode(), 12))}"


_ORIGIN_LETTERS = {origin.value[0]: origin for origin in (OrderOrigin.pay_page, OrderOrigin.static_qr)}


def read_intent(secret: str, state: str, *, now: datetime) -> PayIntent | None:
    """The intent :func:`sign_intent` wrote, or None when forged, malformed or expired."""
    if len(state) > 128:
        return None
    body, _, mac = state.rpartition(".")
    if not hmac.compare_digest(_b64(_mac(secret, INTENT_LABEL, body.encode(), 12)), mac):
        return None
    try:
        household, amount, origin, expires = body.split(".")
        intent = PayIntent(int(household, 36), int(amount, 36), _ORIGIN_LETTERS[origin], int(expires, 36))
    except (ValueError, KeyError):
        return None
    return intent if intent.expires_at >= now.timestamp() else None


# --------------------------------------------------------------------------- the browser


class Browser(StrEnum):
    wechat = "wechat"  # WeChat's own browser: JSAPI only (H5 is refused there)
    alipay = "alipay"  # Alipay's: WAP
    other = "other"  # any other: the payer chooses


def browser_of(user_agent: str | None) -> Browser:
    agent = user_agent or ""
    if "MicroMessenger" in agent:
        return Browser.wechat
    if "AlipayClient" in agent:
        return Browser.alipay
    return Browser.other


def scene_for(channel: PaymentChannel, browser: Browser) -> OrderScene:
    """The scene a page payment opens: JSAPI inside WeChat, H5 in other browsers; Alipay WAP."""
    if channel is PaymentChannel.alipay:
        return OrderScene.wap
    return OrderScene.jsapi if browser is Browser.wechat else OrderScene.h5


def channels_for(browser: Browser, available: Sequence[PaymentChannel]) -> list[PaymentChannel]:
    """The channels the page offers in ``browser`` among the configured ones."""
    if browser is Browser.wechat:
        wanted = [PaymentChannel.wechat]
    elif browser is Browser.alipay:
        wanted = [PaymentChannel.alipay]
    else:
        wanted = [PaymentChannel.alipay, PaymentChannel.wechat]
    return [channel for channel in wanted if channel in available]


# --------------------------------------------------------------------------- the amount


class PageInputError(DomainError):
    """A form field the payer got wrong: shown beside the field."""

    code = ErrorCode.BAD_USER_INPUT


def parse_amount(raw: str | None, *, maximum_fen: int) -> int:
    """The amount typed on a page, in fen: at most two places, above zero, at most the
    single online payment maximum."""
    value = (raw or "").strip().replace("，", ",").replace("。", ".")
    if not value:
        raise PageInputError("请输入金额", "Enter an amount", field="amount")
    match = _AMOUNT.match(value)
    if match is None:
        raise PageInputError("金额格式错误, 请输入如 50 或 12.50 的数字", "Malformed amount (e.g. 50 or 12.50)",
                             field="amount")
    whole, part = match.groups()
    if part is not None and len(part) > 2:
        raise PageInputError("金额最多两位小数 (精确到分)", "At most two decimal places", field="amount")
    fen = int(whole) * 100 + int((part or "0").ljust(2, "0"))
    if fen <= 0:
        raise PageInputError("金额须大于零", "The amount must be above zero", field="amount",
                             code=ErrorCode.PAYMENT_AMOUNT_INVALID)
    if fen > maximum_fen:
        raise PageInputError(f"单笔在线缴费不能超过 {fen_to_yuan(maximum_fen)} 元",
                             f"At most {fen_to_yuan(maximum_fen)} yuan in one online payment", field="amount",
                             code=ErrorCode.PAYMENT_ONLINE_ABOVE_MAXIMUM)
    return fen


def parse_channel(raw: str | None, offered: Sequence[PaymentChannel]) -> PaymentChannel:
    for channel in offered:
        if raw == channel.value:
            return channel
    if len(offered) == 1 and not raw:
        return offered[0]
    raise PageInputError("请选择支付方式", "Choose how to pay", field="channel")


# --------------------------------------------------------------------------- who is paid


@dataclass(frozen=True, slots=True)
class Payee:
    """A household as the pay page shows it: nothing in it but masked."""

    household_id: int
    account_no: str
    masked_name: str
    masked_address: str
    account_id: int | None  # None: no open account (cannot be paid online)
    mode: str | None
    balance_fen: int
    due_fen: int  # postpaid: open bills with late fees today, less credit; prepaid: 0

    @property
    def postpaid(self) -> bool:
        return self.mode == "postpaid"

    @property
    def purpose(self) -> PaymentPurpose:
        return PaymentPurpose.bills if self.postpaid else PaymentPurpose.recharge


_PAYEE = f"""
SELECT h.id, h.account_no, h.name, coalesce(nullif(btrim(h.address), ''), {unit_name_sql('ar', 'h.room')}, '') AS place,
       a.id AS account_id, a.mode::text AS mode, a.balance_fen
FROM households h JOIN areas ar ON ar.id = h.area_id
LEFT JOIN accounts a ON a.household_id = h.id AND a.status = 'open'
WHERE """


async def _payee(session: AsyncSession, where: str, value: Any, today: date) -> Payee | None:
    row = (await session.execute(text(_PAYEE + where), {"v": value})).first()
    if row is None:
        return None
    due = 0
    if row.mode == "postpaid":
        bills = (await session.execute(text(
            f"SELECT {BILL_STATE_COLUMNS} FROM bills WHERE account_id = :a AND status = 'open'"),
            {"a": row.account_id})).mappings().all()
        states = [LateFeeState.of(bill) for bill in bills]
        owed = sum(owed_on(state, today) for state in states)
        # Money on the account no bill took yet (backend.billing.allocations.available_fen):
        # the balance plus what the open bills owe and have posted.
        posted_unpaid = sum(s.amount_fen - s.principal_paid_fen
                            + (0 if s.waived else s.late_fee_posted_fen - s.late_fee_paid_fen) for s in states)
        due = max(0, owed - max(0, row.balance_fen + posted_unpaid))
    return Payee(household_id=row.id, account_no=row.account_no, masked_name=mask_name(row.name),
                 masked_address=mask_address(row.place or ""), account_id=row.account_id, mode=row.mode,
                 balance_fen=int(row.balance_fen or 0), due_fen=due)


async def payee_by_account_no(session: AsyncSession, account_no: str, *, today: date) -> Payee | None:
    """The household with this 缴费号 as the page shows it (None: no such household)."""
    if not account_no or len(account_no) > MAX_ACCOUNT_NO or "\x00" in account_no:
        return None
    return await _payee(session, "h.account_no = :v", account_no, today)


async def payee_by_household(session: AsyncSession, household_id: int, *, today: date) -> Payee | None:
    return await _payee(session, "h.id = :v", household_id, today)


@dataclass(frozen=True, slots=True)
class OrderView:
    out_trade_no: str
    state: OrderState
    amount_fen: int
    channel: PaymentChannel
    masked_name: str
    account_no: str
    paid_at: datetime | None


async def order_view(session: AsyncSession, out_trade_no: str) -> OrderView | None:
    """The order the result page shows (None: no such order)."""
    if not out_trade_no or len(out_trade_no) > 32:
        return None
    row = (await session.execute(text(
        "SELECT o.out_trade_no, o.state::text AS state, o.amount_fen, o.channel::text AS channel, o.paid_at, "
        "h.name, h.account_no FROM payment_orders o JOIN households h ON h.id = o.household_id "
        "WHERE o.out_trade_no = :n"), {"n": out_trade_no})).first()
    if row is None:
        return None
    return OrderView(row.out_trade_no, OrderState(row.state), row.amount_fen, PaymentChannel(row.channel),
                     mask_name(row.name), row.account_no, row.paid_at)


# --------------------------------------------------------------------------- WeChat web authorization


def wechat_authorize_url(base: str, *, app_id: str, redirect_uri: str, state: str) -> str:
    """WeChat's web authorization (``snsapi_base``: silent, gives the openid only);
    ``base`` is ``https://open.weixin.qq.com`` or the local gateway."""
    query = urlencode({"appid": app_id, "redirect_uri": redirect_uri, "response_type": "code",
                       "scope": "snsapi_base", "state": state})
    return f"{base.rstrip('/')}/connect/oauth2/authorize?{query}#wechat_redirect"


def wechat_openid_url(base: str, *, app_id: str, app_secret: str, code: str) -> str:
    """Where the code is exchanged for the openid (``https://api.weixin.qq.com`` or the local gateway)."""
    query = urlencode({"appid": app_id, "secret": app_secret, "code": code, "grant_type": "authorization_code"})
    return f"{base.rstrip('/')}/sns/oauth2/access_token?{query}"


class OpenidRefused(DomainError):
    code = ErrorCode.PAYMENT_OPENID_REQUIRED
    message = "微信授权失败, 请返回重试"
    message_en = "WeChat authorization failed: go back and try again"


def openid_of_answer(answer: Mapping[str, Any]) -> str:
    """The openid of WeChat's answer to the code exchange; OpenidRefused for an error
    answer (``errcode``: a used or expired code)."""
    openid = answer.get("openid")
    if answer.get("errcode") or not isinstance(openid, str) or not 1 <= len(openid) <= 128:
        raise OpenidRefused()
    return openid


# --------------------------------------------------------------------------- drawing


_STYLE = """
*{box-sizing:border-box}body{margin:0;font-family:-apple-system,"PingFang SC","Microsoft YaHei",sans-serif;
background:#f2f5f8;color:#1d2733;font-size:16px;line-height:1.5}
header{background:#1677c8;color:#fff;padding:14px 16px;font-size:18px}
main{max-width:480px;margin:0 auto;padding:12px}
.card{background:#fff;border-radius:10px;padding:14px 16px;margin-bottom:12px}
.row{display:flex;justify-content:space-between;padding:4px 0}.row span:first-child{color:#6b7785}
.due{font-size:28px;color:#d4380d;font-weight:600}
label{display:block;margin:8px 0 4px;color:#6b7785}
input[type=text]{width:100%;font-size:22px;padding:10px;border:1px solid #c9d2dc;border-radius:8px}
.channel{display:flex;align-items:center;gap:8px;padding:10px;border:1px solid #c9d2dc;border-radius:8px;margin:6px 0}
button,.button{display:block;width:100%;margin-top:14px;padding:13px;font-size:18px;border:0;border-radius:8px;
background:#1677c8;color:#fff;text-align:center;text-decoration:none}
.error{color:#cf1322;margin:4px 0}.muted{color:#6b7785;font-size:14px}
.state{font-size:24px;text-align:center;padding:16px 0}.paid{color:#389e0d}.closed,.failed{color:#cf1322}
"""

CHANNEL_TITLES = {PaymentChannel.alipay: "支付宝", PaymentChannel.wechat: "微信支付"}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, *, refresh_s: int | None = None, script: str | None = None) -> str:
    """A whole page: phone-first, inline CSS, no external resource; ``script`` is inlined
    (its hash goes into the page's CSP, :func:`page_policy`)."""
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    scripted = f"<script>{script}</script>" if script else ""
    return (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">{refresh}'
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
            f"<body><header>{_e(title)}</header><main>{body}</main>{scripted}</body></html>")


def page_policy(script: str | None, *, form_targets: Sequence[str] = ()) -> str:
    """The page's Content-Security-Policy: nothing external but where its form's answer
    may redirect (the gateways' cashier pages: ``form_targets``), its one inline script
    by hash, inline styles."""
    scripts = "'none'"
    if script:
        scripts = f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
    targets = " ".join(["'self'", *form_targets])
    return (f"default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; script-src {scripts}; "
            f"form-action {targets}; base-uri 'none'; frame-ancestors 'none'")


def _row(label: str, value: str, css: str = "") -> str:
    return f'<div class="row"><span>{_e(label)}</span><span class="{css}">{_e(value)}</span></div>'


def payee_card(payee: Payee) -> str:
    rows = [_row("户号", payee.account_no), _row("户名", payee.masked_name)]
    if payee.masked_address:
        rows.append(_row("地址", payee.masked_address))
    if payee.postpaid:
        rows.append(_row("应缴金额 (含滞纳金)", f"¥{fen_to_yuan(payee.due_fen)}", "due"))
    else:
        rows.append(_row("账户余额", f"¥{fen_to_yuan(payee.balance_fen)}"))
    return f'<div class="card">{"".join(rows)}</div>'


@dataclass(frozen=True, slots=True)
class PayForm:
    """The form as it was filled (or its defaults) and what was wrong with it."""

    amount: str = ""
    channel: str = ""
    errors: Mapping[str, str] | None = None


def default_amount(payee: Payee) -> str:
    return fen_to_yuan(payee.due_fen) if payee.due_fen > 0 else ""


def pay_page(payee: Payee, *, action: str, channels: Sequence[PaymentChannel], browser: Browser, form: PayForm,
             maximum_fen: int) -> str:
    """The pay page: the household (masked), what is due, the amount (default: the due)
    and the channels this browser may use."""
    errors = dict(form.errors or {})
    general = errors.pop("", None)
    parts = [payee_card(payee)]
    if general:
        parts.append(f'<p class="error">{_e(general)}</p>')
    if not channels:
        parts.append('<div class="card"><p class="error">暂未开通在线缴费, 请到营业厅或使用其它方式缴费。</p></div>')
        return page("缴纳水费", "".join(parts))
    amount_error = f'<p class="error">{_e(errors["amount"])}</p>' if "amount" in errors else ""
    options = []
    chosen = form.channel or channels[0].value
    for channel in channels:
        checked = " checked" if channel.value == chosen else ""
        options.append(f'<label class="channel"><input type="radio" name="channel" value="{channel.value}"{checked}>'
                       f"{_e(CHANNEL_TITLES[channel])}</label>")
    channel_error = f'<p class="error">{_e(errors["channel"])}</p>' if "channel" in errors else ""
    hint = "在微信中使用微信支付" if browser is Browser.wechat else "在支付宝中使用支付宝支付" if browser is Browser.alipay else ""
    purpose = "缴纳水费 (先抵欠费)" if payee.postpaid else "充值"
    parts.append(
        f'<form class="card" method="post" action="{_e(action)}">'
        f'<label for="amount">{purpose}金额 (元)</label>'
        f'<input id="amount" type="text" name="amount" inputmode="decimal" autocomplete="off" maxlength="16" '
        f'value="{_e(form.amount)}">{amount_error}'
        f'<p class="muted">最多两位小数, 单笔不超过 {fen_to_yuan(maximum_fen)} 元</p>'
        f'<label>支付方式</label>{"".join(options)}{channel_error}'
        f'{f"<p class=muted>{_e(hint)}</p>" if hint else ""}'
        f'<button type="submit">立即支付</button></form>')
    return page("缴纳水费", "".join(parts))


def message_page(title: str, message: str) -> str:
    return page(title, f'<div class="card"><p>{_e(message)}</p></div>')


# The JSAPI page's one script: WeixinJSBridge pays, then the result page. The parameters
# come from the page (a data attribute), so the script and its hash never change.
JSAPI_SCRIPT = """(function(){var el=document.getElementById('pay');var p=JSON.parse(el.getAttribute('data-params'));
var done=el.getAttribute('data-result');function go(){location.replace(done);}
function pay(){WeixinJSBridge.invoke('getBrandWCPayRequest',p,function(){go();});}
if(typeof WeixinJSBridge==='undefined'){document.addEventListener('WeixinJSBridgeReady',pay,false);
document.getElementById('hint').textContent='请在微信中打开此页面完成支付';}else{pay();}})();"""


def jsapi_page(*, out_trade_no: str, amount_fen: int, params: Mapping[str, str], result_url: str) -> str:
    """Inside WeChat: calls WeixinJSBridge with the order's JSAPI parameters, then goes
    to the result page (which asks the order, never the bridge's word)."""
    body = (f'<div class="card" id="pay" data-params="{_e(json.dumps(dict(params), ensure_ascii=False))}" '
            f'data-result="{_e(result_url)}">'
            f'{_row("订单号", out_trade_no)}{_row("金额", f"¥{fen_to_yuan(amount_fen)}", "due")}'
            f'<p id="hint" class="muted">正在调起微信支付…</p>'
            f'<a class="button" href="{_e(result_url)}">已完成支付</a></div>')
    return page("微信支付", body, script=JSAPI_SCRIPT)


_STATE_WORDS = {OrderState.created: ("等待支付结果…", "waiting"), OrderState.paid: ("支付成功", "paid"),
                OrderState.closed: ("订单已关闭", "closed"), OrderState.failed: ("支付失败", "failed")}


def result_page(order: OrderView, *, refresh_s: int = 3) -> str:
    """The result: paid, waiting (the page reloads itself every few seconds until the
    notification or the query job settles it), closed or failed."""
    words, css = _STATE_WORDS[order.state]
    body = (f'<div class="card"><div class="state {css}" id="state" data-state="{order.state.value}">{_e(words)}</div>'
            f'{_row("户号", order.account_no)}{_row("户名", order.masked_name)}'
            f'{_row("金额", f"¥{fen_to_yuan(order.amount_fen)}")}{_row("支付方式", CHANNEL_TITLES[order.channel])}'
            f'{_row("订单号", order.out_trade_no)}</div>')
    if order.state is OrderState.created:
        body += '<p class="muted">支付完成后本页会自动刷新; 如已扣款, 请稍候。</p>'
    return page("支付结果", body, refresh_s=refresh_s if order.state is OrderState.created else None)


def redirect_target(payload: ClientPayload) -> str | None:
    """The URL a page payment sends the browser to (a pay URL), or None for a payload
    the page draws itself (JSAPI)."""
    if payload.kind is PayloadKind.pay_url and isinstance(payload.value, str):
        return payload.value
    return None


def result_path(out_trade_no: str) -> str:
    return f"/pay/result/{quote(out_trade_no, safe='')}"
