"""Notifications (支付结果通知): what Alipay and WeChat Pay post to the notify routes when an
order is paid, verified and credited exactly once.

:func:`receive_notification` finds the merchant (Alipay: ``app_id`` in the form; WeChat
v2: ``appid`` + ``mch_id`` in the XML; v3: the v3 merchants, the one whose platform key
id the ``Wechatpay-Serial`` header names first), verifies the notification with that
merchant's gateway (signature, app id / merchant id), then checks that the order exists,
was made with that merchant, that the amount equals the order's exactly and that the
trade status says paid. Then, in ONE transaction, it credits the order
(:func:`backend.payments.online.credit.credit_order`) and stores the notification
``accepted``; the route answers ``success`` only after that commit.

- A repeat for an order already paid answers success and writes nothing (no row, no
  entry): replays are free, and 10 at once credit once (the order row's lock).
- A notification that fails any check is stored ``rejected`` with the reason in a
  transaction of its own, answered with the protocol's failure (the platform retries),
  and opens (or refreshes) the ``verification_failed`` alarm of the order (subject
  payment; subject 0 when it names no order of ours).
- A genuine notification whose trade status is not paid (Alipay's ``TRADE_CLOSED``) is
  stored ``rejected`` with the status and answered success: nothing to credit, nothing
  to retry, nothing alarming.
- A genuine notification for a ``closed`` or ``failed`` order is credited (the payer's
  money was taken) and opens an alarm (credit.py) — except for a barcode order cancelled
  at the gateway (撤销 gives the money back): stored ``rejected``, alarmed, answered
  success (nothing to retry), never credited.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import parse_qsl
from xml.etree import ElementTree

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db import raw_connection, transaction
from backend.errors import DomainError
from backend.payments.online.credit import (
    LOCK_UNPAID_ORDER_BY_TRADE_NO,
    AcceptedNotification,
    OrderCancelledAtGateway,
    alarm_on_order,
    credit_locked,
)
from backend.payments.online.gateway import (
    NotificationRejected,
    NotifyAnswer,
    OnlineGateway,
    VerifiedNotification,
)
from backend.payments.online.merchants import Merchant, WechatMerchant
from backend.payments.online.models import (
    GatewayApi,
    NotificationVerdict,
    OrderState,
    PaymentOrder,
)
from backend.payments.online.registry import OnlinePayments

log = logging.getLogger("shuiwu.payments.notify")

# What a notify route reads at most (Alipay's forms and WeChat's bodies are a few KiB).
NOTIFY_MAX_BODY_BYTES = 64 * 1024
_KEPT_HEADERS = re.compile(r"^wechatpay-", re.IGNORECASE)

# The protocol's failure when no merchant's gateway can say it (an unknown app id, a body
# that is not the protocol's at all).
_FAILURES: dict[GatewayApi, NotifyAnswer] = {
    GatewayApi.alipay: NotifyAnswer(200, "text/plain", b"fail"),
    GatewayApi.wechat_v2: NotifyAnswer(200, "application/xml", b"<xml><return_code><![CDATA[FAIL]]></return_code>"
                                                               b"<return_msg><![CDATA[FAIL]]></return_msg></xml>"),
    GatewayApi.wechat_v3: NotifyAnswer(400, "application/json", b'{"code":"FAIL","message":"FAIL"}'),
}


@dataclass(frozen=True, slots=True)
class NotifyOutcome:
    """What :func:`receive_notification` did: ``verdict`` is ``accepted`` (credited now),
    ``repeat`` (already paid: nothing written), ``not_paid`` (genuine, nothing to credit)
    or ``rejected`` (``reason``)."""

    answer: NotifyAnswer
    verdict: str
    order_id: int | None = None
    reason: str | None = None


class _Refused(Exception):
    """A check failed after the signature: stored as rejected with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _alipay_candidates(online: OnlinePayments, body: bytes) -> list[tuple[Merchant, OnlineGateway]]:
    try:
        form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
    except (UnicodeDecodeError, ValueError):
        raise NotificationRejected("not a form body") from None
    app_id = form.get("app_id") or form.get("auth_app_id")
    if not app_id:
        raise NotificationRejected("no app_id in the form", out_trade_no=form.get("out_trade_no"))
    found = [(m, g) for m, g in online.of_api(GatewayApi.alipay) if m.app_id == app_id]
    if not found:
        raise NotificationRejected(f"app id {app_id[:32]} is not one of our Alipay apps",
                                   out_trade_no=form.get("out_trade_no"))
    return found


def _xml_fields(body: bytes) -> dict[str, str]:
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise NotificationRejected("not an XML body (a DTD)")
    try:
        root = ElementTree.fromstring(body)
    except (ElementTree.ParseError, ValueError):  # ValueError: a multi-byte encoding declared (gbk)
        raise NotificationRejected("not an XML body") from None
    return {child.tag: (child.text or "") for child in root}


def _wechat_v2_candidates(online: OnlinePayments, body: bytes) -> list[tuple[Merchant, OnlineGateway]]:
    fields = _xml_fields(body)
    app_id, mch_id = fields.get("appid", ""), fields.get("mch_id", "")
    found: list[tuple[Merchant, OnlineGateway]] = [
        (m, g) for m, g in online.of_api(GatewayApi.wechat_v2)
        if isinstance(m, WechatMerchant) and m.app_id == app_id and m.mch_id == mch_id]
    if not found:
        raise NotificationRejected(f"appid {app_id[:32]!r} / mch_id {mch_id[:16]!r} is not one of our merchants",
                                   out_trade_no=fields.get("out_trade_no"))
    return found


def _wechat_v3_candidates(online: OnlinePayments, headers: Mapping[str, str],
                          body: bytes) -> list[tuple[Merchant, OnlineGateway]]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise NotificationRejected("not a JSON body") from None
    if not isinstance(document, dict) or not isinstance(document.get("resource"), dict):
        raise NotificationRejected("not a WeChat Pay v3 notification (no resource)")
    found = online.of_api(GatewayApi.wechat_v3)
    if not found:
        raise NotificationRejected("no WeChat Pay v3 merchant is configured")
    serial = {k.lower(): v for k, v in headers.items()}.get("wechatpay-serial")
    # The merchant whose platform key signed it first; the others after (the key id may rotate).
    return sorted(found, key=lambda pair: getattr(pair[0], "platform_public_key_id", None) != serial)


def _candidates(online: OnlinePayments, api: GatewayApi, headers: Mapping[str, str],
                body: bytes) -> list[tuple[Merchant, OnlineGateway]]:
    if not body:
        raise NotificationRejected("an empty body")
    if api is GatewayApi.alipay:
        return _alipay_candidates(online, body)
    if api is GatewayApi.wechat_v2:
        return _wechat_v2_candidates(online, body)
    return _wechat_v3_candidates(online, headers, body)


def _verify(candidates: list[tuple[Merchant, OnlineGateway]], headers: Mapping[str, str],
            body: bytes) -> tuple[Merchant, OnlineGateway, VerifiedNotification]:
    first: NotificationRejected | None = None
    for merchant, gateway in candidates:
        try:
            return merchant, gateway, gateway.verify_notification(headers, body)
        except NotificationRejected as rejected:
            first = first or rejected
        except Exception as error:  # an SDK choking on a body: a rejection, never a 500
            log.warning("a %s notification could not be verified: %r", merchant.name, error)
            first = first or NotificationRejected(f"unreadable notification ({type(error).__name__})")
    assert first is not None
    raise first


def _verified(online: OnlinePayments, api: GatewayApi, headers: Mapping[str, str],
              body: bytes) -> tuple[Merchant, OnlineGateway, VerifiedNotification]:
    """The merchant, its gateway and the verified notification; whatever the body, a
    failure is :class:`NotificationRejected` (no body can make the route answer 500)."""
    try:
        candidates = _candidates(online, api, headers, body)
    except NotificationRejected:
        raise
    except Exception as error:  # a parser's surprise: a rejection
        log.warning("a %s notification could not be read: %r", api.value, error)
        raise NotificationRejected(f"unreadable notification ({type(error).__name__})") from None
    return _verify(candidates, headers, body)


def _kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v[:512] for k, v in headers.items() if _KEPT_HEADERS.match(k)}


def _kept_body(body: bytes) -> str:
    return body[:NOTIFY_MAX_BODY_BYTES].decode("utf-8", errors="replace").replace("\x00", "")


@dataclass(frozen=True, slots=True)
class _OrderFacts:
    """What the checks read of an order (one light statement: no ORM object)."""

    id: int
    out_trade_no: str
    api: GatewayApi
    merchant: str
    amount_fen: int
    state: OrderState


_ORDER_FACTS = "SELECT id, out_trade_no, api, merchant, amount_fen, state FROM payment_orders WHERE out_trade_no = $1"
_INSERT_NOTIFICATION = """
INSERT INTO payment_notifications (api, order_id, out_trade_no, verdict, reason, headers, body, received_at)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)
"""


def _facts(row: Any) -> _OrderFacts:
    return _OrderFacts(row["id"], row["out_trade_no"], GatewayApi(row["api"]), row["merchant"], row["amount_fen"],
                       OrderState(row["state"]))


async def _order_by_trade_no(session: AsyncSession, out_trade_no: str | None) -> _OrderFacts | None:
    if not out_trade_no or len(out_trade_no) > 64:
        return None
    row = await (await raw_connection(session)).fetchrow(_ORDER_FACTS, out_trade_no)
    return _facts(row) if row is not None else None


async def _store(session: AsyncSession, *, api: GatewayApi, order: _OrderFacts | None, out_trade_no: str | None,
                 verdict: NotificationVerdict, reason: str | None, headers: Mapping[str, str], body: bytes,
                 now: datetime) -> None:
    await (await raw_connection(session)).execute(
        _INSERT_NOTIFICATION, api.value, order.id if order is not None else None,
        (out_trade_no or None) and out_trade_no[:64], verdict.value, reason and reason[:200],
        json.dumps(_kept_headers(headers)), _kept_body(body), now)


async def _reject(sessions: async_sessionmaker[AsyncSession], *, api: GatewayApi, reason: str,
                  out_trade_no: str | None, headers: Mapping[str, str], body: bytes,
                  now: datetime) -> _OrderFacts | None:
    """Store the notification rejected and open the order's alarm, in a transaction of its own."""
    async with transaction(sessions) as session:
        order = await _order_by_trade_no(session, out_trade_no)
        await _store(session, api=api, order=order, out_trade_no=out_trade_no, verdict=NotificationVerdict.rejected,
                     reason=reason, headers=headers, body=body, now=now)
        full = await session.get(PaymentOrder, order.id) if order is not None else None
        await alarm_on_order(session, order=full, now=now,
                             detail=f"{api.value} notification rejected: {reason}")
    log.warning("payment notification rejected (%s, %s): %s", api.value, out_trade_no, reason)
    return order


async def receive_notification(sessions: async_sessionmaker[AsyncSession], *, online: OnlinePayments,
                               api: GatewayApi, headers: Mapping[str, str], body: bytes, now: datetime,
                               tz: str | tzinfo = "Asia/Shanghai") -> NotifyOutcome:
    """Verify, check and credit one notification (module docstring); its transactions
    are its own and have committed when it returns, so its answer may be sent."""
    api = GatewayApi(api)
    gateway: OnlineGateway | None = None
    try:
        merchant, gateway, verified = _verified(online, api, headers, body)
    except NotificationRejected as rejected:
        order = await _reject(sessions, api=api, reason=rejected.reason, out_trade_no=rejected.out_trade_no,
                              headers=headers, body=body, now=now)
        answer = gateway.answer(False) if gateway is not None else _FAILURES[api]
        return NotifyOutcome(answer, "rejected", order.id if order else None, rejected.reason)
    try:
        async with transaction(sessions) as session:
            driver = await raw_connection(session)
            # An unpaid order is locked at once; a paid one (a replay) is read without a lock.
            locked = await driver.fetchrow(LOCK_UNPAID_ORDER_BY_TRADE_NO, verified.out_trade_no[:64])
            order = _facts(locked) if locked is not None else await _order_by_trade_no(session, verified.out_trade_no)
            if order is None:
                raise _Refused(f"unknown out_trade_no {verified.out_trade_no[:64]!r}")
            if (order.api, order.merchant) != (api, merchant.name):
                raise _Refused(f"order {order.out_trade_no} was made with {order.api.value} merchant "
                               f"{order.merchant!r}, not {merchant.name!r}")
            if verified.amount_fen != order.amount_fen:
                raise _Refused(f"amount {verified.amount_fen} fen differs from the order's {order.amount_fen} fen")
            if not verified.paid:
                await _store(session, api=api, order=order, out_trade_no=order.out_trade_no,
                             verdict=NotificationVerdict.rejected, reason=f"trade status {verified.status}: not paid",
                             headers=headers, body=body, now=now)
                return NotifyOutcome(gateway.answer(True), "not_paid", order.id)
            if locked is None:  # paid already (by this notification's twin, or its first delivery)
                return NotifyOutcome(gateway.answer(True), "repeat", order.id)
            await credit_locked(session, locked, trade_no=verified.trade_no, amount_fen=verified.amount_fen, now=now,
                                tz=tz, paid_at=verified.paid_at, notification=AcceptedNotification(
                                    api.value, json.dumps(_kept_headers(headers)), _kept_body(body), now))
    except _Refused as refused:
        order = await _reject(sessions, api=api, reason=refused.reason, out_trade_no=verified.out_trade_no,
                              headers=headers, body=body, now=now)
        return NotifyOutcome(gateway.answer(False), "rejected", order.id if order else None, refused.reason)
    except OrderCancelledAtGateway as cancelled:  # its money went back with the cancel: a person looks
        reason = f"not credited: {cancelled.message_en}"
        order = await _reject(sessions, api=api, reason=reason, out_trade_no=verified.out_trade_no,
                              headers=headers, body=body, now=now)
        return NotifyOutcome(gateway.answer(True), "rejected", order.id if order else None, reason)
    except DomainError as refused:  # the account closed since (post_entry refuses it): a person must refund
        reason = f"cannot credit: {refused.message_en}"
        order = await _reject(sessions, api=api, reason=reason, out_trade_no=verified.out_trade_no,
                              headers=headers, body=body, now=now)
        return NotifyOutcome(gateway.answer(False), "rejected", order.id if order else None, reason)
    return NotifyOutcome(gateway.answer(True), "accepted", order.id)
