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
- A genuine notification for a ``closed`` order is credited (the payer's money was
  taken) and opens an alarm (credit.py).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from urllib.parse import parse_qsl
from xml.etree import ElementTree

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db import transaction
from backend.errors import DomainError
from backend.payments.online.credit import alarm_on_order, credit_order
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
    PaymentNotification,
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
    except ElementTree.ParseError:
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
    assert first is not None
    raise first


def _kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v[:512] for k, v in headers.items() if _KEPT_HEADERS.match(k)}


def _kept_body(body: bytes) -> str:
    return body[:NOTIFY_MAX_BODY_BYTES].decode("utf-8", errors="replace").replace("\x00", "")


async def _order_by_trade_no(session: AsyncSession, out_trade_no: str | None) -> PaymentOrder | None:
    if not out_trade_no or len(out_trade_no) > 64:
        return None
    found = await session.execute(select(PaymentOrder).where(
        PaymentOrder.out_trade_no == out_trade_no))  # type: ignore[arg-type]
    return found.scalar_one_or_none()  # type: ignore[no-any-return]


async def _store(session: AsyncSession, *, api: GatewayApi, order: PaymentOrder | None, out_trade_no: str | None,
                 verdict: NotificationVerdict, reason: str | None, headers: Mapping[str, str], body: bytes,
                 now: datetime) -> None:
    session.add(PaymentNotification(api=api, order_id=order.id if order is not None else None,
                                    out_trade_no=(out_trade_no or None) and out_trade_no[:64], verdict=verdict,
                                    reason=reason and reason[:200], headers=_kept_headers(headers),
                                    body=_kept_body(body), received_at=now))
    await session.flush()


async def _reject(sessions: async_sessionmaker[AsyncSession], *, api: GatewayApi, reason: str,
                  out_trade_no: str | None, order: PaymentOrder | None, headers: Mapping[str, str], body: bytes,
                  now: datetime) -> PaymentOrder | None:
    """Store the notification rejected and open the order's alarm, in a transaction of its own."""
    async with transaction(sessions) as session:
        if order is None:
            order = await _order_by_trade_no(session, out_trade_no)
        await _store(session, api=api, order=order, out_trade_no=out_trade_no, verdict=NotificationVerdict.rejected,
                     reason=reason, headers=headers, body=body, now=now)
        await alarm_on_order(session, order=order, now=now,
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
        merchant, gateway, verified = _verify(_candidates(online, api, headers, body), headers, body)
    except NotificationRejected as rejected:
        order = await _reject(sessions, api=api, reason=rejected.reason, out_trade_no=rejected.out_trade_no,
                              order=None, headers=headers, body=body, now=now)
        answer = gateway.answer(False) if gateway is not None else _FAILURES[api]
        return NotifyOutcome(answer, "rejected", order.id if order else None, rejected.reason)
    try:
        async with transaction(sessions) as session:
            order = await _order_by_trade_no(session, verified.out_trade_no)
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
            if order.state is OrderState.paid:  # a repeat: nothing to write (no lock taken)
                return NotifyOutcome(gateway.answer(True), "repeat", order.id)
            assert order.id is not None
            credited = await credit_order(session, order_id=order.id, trade_no=verified.trade_no,
                                          amount_fen=verified.amount_fen, now=now, tz=tz, paid_at=verified.paid_at)
            if not credited.credited:  # another notification credited it while this one waited
                return NotifyOutcome(gateway.answer(True), "repeat", order.id)
            await _store(session, api=api, order=order, out_trade_no=order.out_trade_no,
                         verdict=NotificationVerdict.accepted, reason=None, headers=headers, body=body, now=now)
    except _Refused as refused:
        # The order read in the rolled-back transaction is expired: _reject reads it again.
        order = await _reject(sessions, api=api, reason=refused.reason, out_trade_no=verified.out_trade_no,
                              order=None, headers=headers, body=body, now=now)
        return NotifyOutcome(gateway.answer(False), "rejected", order.id if order else None, refused.reason)
    except DomainError as refused:  # the account closed since (post_entry refuses it): a person must refund
        reason = f"cannot credit: {refused.message_en}"
        order = await _reject(sessions, api=api, reason=reason, out_trade_no=verified.out_trade_no, order=None,
                              headers=headers, body=body, now=now)
        return NotifyOutcome(gateway.answer(False), "rejected", order.id if order else None, reason)
    return NotifyOutcome(gateway.answer(True), "accepted", order.id)
