"""Payment orders (支付订单): open an order for a household's account, ask the gateway for
what the payer pays with, and find orders for residents and staff.

**Opening** (:func:`open_order`, the caller commits) validates everything before writing:
the amount is above zero (PAYMENT_AMOUNT_INVALID) and at most the merchants file's
``max_online_payment_fen`` (PAYMENT_ONLINE_ABOVE_MAXIMUM); the channel has a merchant
(PAYMENT_CHANNEL_UNAVAILABLE) and offers the scene (PAYMENT_SCENE_UNSUPPORTED; barcode is
the counter's, :mod:`.counter_online`); ``jsapi`` needs the payer's openid
(PAYMENT_OPENID_REQUIRED); WeChat ``h5`` inside WeChat's own browser (a ``MicroMessenger``
user agent) is refused (PAYMENT_H5_IN_WECHAT: the page pays by JSAPI there); the account
is open (PAYMENT_ACCOUNT_NOT_PAYABLE). The row gets ``out_trade_no`` = ``SW`` + the
utility's day of its creation + its id padded to 10 (``SW202612070000000123``) and
expires after the file's ``order_expiry_minutes``. The client's idempotency key makes a
double tap one order: the same key for the same request returns the stored order; for
another request it is IDEMPOTENCY_CONFLICT.

**Asking the gateway** (:func:`request_payload`, its own transactions) happens after the
order row is committed, outside any transaction (a slow gateway holds no lock and no
connection): the gateway's answer is stored on the order as ``client_payload``; a refusal
marks it ``failed`` (``payment_order.changed``) and raises the gateway error.
:func:`create_payment_order` is both in a row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import Select, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.archives.models import Area, Household
from backend.billing.accounts import account_in_scope
from backend.billing.models import Account, AccountStatus
from backend.db import transaction
from backend.errors import DomainError, ErrorCode, NotFound
from backend.gateways.errors import GatewayError
from backend.payments import errors as payment_errors
from backend.payments.counter import business_day
from backend.payments.models import PaymentChannel, PaymentPurpose
from backend.payments.online import errors
from backend.payments.online.credit import order_changed
from backend.payments.online.gateway import ClientPayload, OrderRequest, PayloadKind
from backend.payments.online.models import CHANNEL_SCENES, OrderOrigin, OrderScene, OrderState, PaymentOrder
from backend.payments.online.registry import OnlinePayments, call_gateway

MAX_IDEMPOTENCY_KEY = 100
_ADVISORY_ORDER_KEY = 18_0001  # pg_advisory_xact_lock class of an idempotency key being opened


@dataclass(frozen=True, slots=True)
class OrderAsk:
    """What a payer asks for. ``household_id`` or ``account_no`` names the account;
    ``created_by`` is 'resident:<id>', a staff login or 'anonymous'."""

    amount_fen: int
    purpose: PaymentPurpose
    channel: PaymentChannel
    scene: OrderScene
    origin: OrderOrigin
    created_by: str
    household_id: int | None = None
    account_no: str | None = None
    account_id: int | None = None  # the counter names the account itself
    openid: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    return_url: str | None = None
    idempotency_key: str | None = None
    operator_id: int | None = None  # the cashier of a counter order


@dataclass(frozen=True, slots=True)
class Reach:
    """Whose accounts the caller may pay: a staff caller's area scope, a resident's bound
    households, or (both None) any account by its number (the pay page needs no login)."""

    scope_patterns: Sequence[str] | None = None
    household_ids: Sequence[int] | None = None


ANYONE = Reach()


def out_trade_no(order_id: int, created_at: datetime, tz: str | tzinfo) -> str:
    """'SW' + the utility's day of ``created_at`` + the id padded to 10."""
    return f"SW{business_day(created_at, tz):%Y%m%d}{order_id:010d}"


def in_wechat(user_agent: str | None) -> bool:
    """WeChat's own browser (公众号 pages, chats) says MicroMessenger in its user agent."""
    return "micromessenger" in (user_agent or "").lower()


def _subject(purpose: PaymentPurpose, account_no: str) -> str:
    return f"{'水费充值' if purpose is PaymentPurpose.recharge else '水费缴费'} {account_no}"[:128]


def _validate(ask: OrderAsk, online: OnlinePayments) -> None:
    amount = ask.amount_fen
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise payment_errors.PaymentAmountInvalid(field="amount")
    if amount > online.merchants.max_online_payment_fen:
        raise errors.PaymentOnlineAboveMaximum(field="amount")
    if not online.configured(ask.channel):
        raise errors.PaymentChannelUnavailable(field="channel")
    if ask.scene not in CHANNEL_SCENES[ask.channel]:
        raise errors.PaymentSceneUnsupported(field="scene")
    if ask.scene is OrderScene.jsapi and not (ask.openid or "").strip():
        raise errors.PaymentOpenidRequired(field="openid")
    if ask.openid is not None and len(ask.openid) > 128:
        raise DomainError("openid 过长", "The openid is too long", field="openid", code=ErrorCode.TOO_LONG)
    if ask.channel is PaymentChannel.wechat and ask.scene is OrderScene.h5 and in_wechat(ask.user_agent):
        raise errors.PaymentH5InWechat(field="scene")
    if ask.idempotency_key is not None and not 1 <= len(ask.idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise DomainError("幂等键须为 1 至 100 个字符", "The idempotency key must be 1 to 100 characters",
                          field="idempotencyKey", code=ErrorCode.INVALID)
    if ask.return_url is not None and (len(ask.return_url) > 500 or not ask.return_url.startswith(("https://",
                                                                                                   "http://"))):
        raise DomainError("返回地址无效", "The return URL must be an http(s) URL of at most 500 characters",
                          field="returnUrl", code=ErrorCode.INVALID)


async def _account(session: AsyncSession, ask: OrderAsk, reach: Reach) -> tuple[Account, str]:
    """The account the order pays, in the caller's reach, with its 缴费号."""
    if ask.account_id is not None:
        account = await account_in_scope(session, ask.account_id, reach.scope_patterns, field="accountId",
                                         household_ids=reach.household_ids)
        if account.status is not AccountStatus.open:
            raise errors.PaymentAccountNotPayable(field="accountId")
        household = await session.get(Household, account.household_id)
        assert household is not None
        return account, household.account_no
    if ask.household_id is not None:
        household = await session.get(Household, ask.household_id)
        field = "householdId"
    elif ask.account_no:
        found = await session.execute(select(Household).where(Household.account_no == ask.account_no.strip()))  # type: ignore[arg-type]
        household = found.scalar_one_or_none()
        field = "accountNo"
    else:
        raise DomainError("请指定户号", "Name the household or its account number", field="householdId",
                          code=ErrorCode.BAD_USER_INPUT)
    if household is None:
        raise NotFound(field=field)
    found_account = await session.execute(select(Account).where(Account.household_id == household.id))  # type: ignore[arg-type]
    first = found_account.scalars().first()
    if first is None:
        raise errors.PaymentAccountNotPayable(field=field)
    assert first.id is not None
    account = await account_in_scope(session, first.id, reach.scope_patterns, field=field,
                                     household_ids=reach.household_ids)
    if account.status is not AccountStatus.open:
        raise errors.PaymentAccountNotPayable(field=field)
    return account, household.account_no


def _same_request(order: PaymentOrder, ask: OrderAsk, account_id: int) -> bool:
    return (order.account_id, order.amount_fen, order.purpose, order.channel, order.scene, order.payer_openid) == (
        account_id, ask.amount_fen, ask.purpose, ask.channel, ask.scene, ask.openid)


async def open_order(session: AsyncSession, *, online: OnlinePayments, ask: OrderAsk, now: datetime,
                     tz: str | tzinfo = "Asia/Shanghai", reach: Reach = ANYONE) -> tuple[PaymentOrder, bool]:
    """Validate ``ask`` and write its order (module docstring). Returns the order and
    whether it is new (False: the idempotency key's stored order). The caller commits."""
    ask = replace(ask, channel=PaymentChannel(ask.channel), scene=OrderScene(ask.scene),
                  purpose=PaymentPurpose(ask.purpose), origin=OrderOrigin(ask.origin))
    _validate(ask, online)
    account, account_no = await _account(session, ask, reach)
    assert account.id is not None
    if ask.idempotency_key is not None:
        # Two taps at once: the second waits for the first's commit, then finds its order.
        await session.execute(text("SELECT pg_advisory_xact_lock(:class, hashtext(:key))"),
                              {"class": _ADVISORY_ORDER_KEY, "key": ask.idempotency_key})
        previous = (await session.execute(select(PaymentOrder).where(
            PaymentOrder.idempotency_key == ask.idempotency_key))).scalar_one_or_none()  # type: ignore[arg-type]
        if previous is not None:
            if not _same_request(previous, ask, account.id):
                raise payment_errors.IdempotencyKeyReused(field="idempotencyKey")
            return previous, False
    merchant = online.merchants.default(ask.channel)
    assert merchant is not None
    number = (await session.execute(text("SELECT nextval('payment_orders_id_seq')"))).scalar_one()
    order = PaymentOrder(
        id=number, out_trade_no=out_trade_no(number, now, tz), account_id=account.id,
        household_id=account.household_id, channel=ask.channel, api=merchant.api, merchant=merchant.name,
        scene=ask.scene, origin=ask.origin, purpose=ask.purpose, amount_fen=ask.amount_fen,
        subject=_subject(ask.purpose, account_no), idempotency_key=ask.idempotency_key, payer_openid=ask.openid,
        client_ip=(ask.client_ip or None) and ask.client_ip[:45], created_by=ask.created_by[:100],
        operator_id=ask.operator_id, created_at=now,
        expires_at=now + timedelta(minutes=online.merchants.order_expiry_minutes))
    session.add(order)
    await session.flush()
    await order_changed(session, order)
    return order, True


def order_request(order: PaymentOrder, online: OnlinePayments, *, return_url: str | None = None,
                  auth_code: str | None = None) -> OrderRequest:
    """What the gateway is told about ``order``."""
    return OrderRequest(out_trade_no=order.out_trade_no, amount_fen=order.amount_fen, subject=order.subject,
                        scene=order.scene, notify_url=online.notify_url(order.channel, order.api),
                        expires_at=order.expires_at, client_ip=order.client_ip or "127.0.0.1", return_url=return_url,
                        openid=order.payer_openid, auth_code=auth_code)


def payload_of(order: PaymentOrder) -> ClientPayload | None:
    """The client payload stored on ``order`` (None: not asked yet, or a barcode order)."""
    stored = order.client_payload
    if not stored:
        return None
    return ClientPayload(PayloadKind(stored["kind"]), stored["value"])


async def mark_failed(sessions: async_sessionmaker[AsyncSession], *, order_id: int, failure: str,
                      now: datetime) -> PaymentOrder | None:
    """Mark an unpaid order ``failed`` with ``failure`` (its own transaction)."""
    async with transaction(sessions) as session:
        order = (await session.execute(select(PaymentOrder).where(PaymentOrder.id == order_id)  # type: ignore[arg-type]
                                       .with_for_update())).scalar_one()
        if order.state is not OrderState.created:
            return order
        order.state, order.failure, order.closed_at = OrderState.failed, failure[:200], now
        await session.flush()
        await order_changed(session, order)
        return order


async def request_payload(sessions: async_sessionmaker[AsyncSession], *, online: OnlinePayments,
                          services: Mapping[str, Any], order: PaymentOrder, now: datetime,
                          return_url: str | None = None) -> ClientPayload:
    """Ask the gateway to open ``order`` (committed already) and store what the payer pays
    with; a stored payload is returned as it is (a repeat asks nothing). A gateway failure
    marks the order failed and is raised (a timeout leaves it ``created``: the gateway may
    have opened it, the query job will find out)."""
    stored = payload_of(order)
    if stored is not None:
        return stored
    assert order.id is not None
    gateway = online.gateway(order.channel, order.merchant)
    request = order_request(order, online, return_url=return_url)
    try:
        payload = await call_gateway(services, gateway, "create", gateway.create, request,
                                     request={"out_trade_no": order.out_trade_no, "scene": order.scene.value,
                                              "amount_fen": order.amount_fen},
                                     reference=order.out_trade_no)
    except GatewayError as failure:
        if not failure.maybe_done:
            await mark_failed(sessions, order_id=order.id, failure=f"{failure.code.value}: {failure.detail}",
                              now=now)
        raise
    async with transaction(sessions) as session:
        await session.execute(text("UPDATE payment_orders SET client_payload = CAST(:payload AS jsonb) "
                                   "WHERE id = :id"),
                              {"payload": _json(payload.as_json()), "id": order.id})
    order.client_payload = payload.as_json()
    return payload


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def create_payment_order(sessions: async_sessionmaker[AsyncSession], *, online: OnlinePayments,
                               services: Mapping[str, Any], ask: OrderAsk, now: datetime,
                               tz: str | tzinfo = "Asia/Shanghai", reach: Reach = ANYONE
                               ) -> tuple[PaymentOrder, ClientPayload]:
    """Open the order (committed), then ask the gateway (see the module docstring)."""
    async with transaction(sessions) as session:
        order, _ = await open_order(session, online=online, ask=ask, now=now, tz=tz, reach=reach)
    if order.state is not OrderState.created and payload_of(order) is None:
        raise errors.PaymentOrderClosed(field="idempotencyKey")
    payload = await request_payload(sessions, online=online, services=services, order=order, now=now,
                                    return_url=ask.return_url)
    return order, payload


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True, slots=True)
class OrderFilter:
    household_id: int | None = None
    state: OrderState | None = None
    channel: PaymentChannel | None = None
    origin: OrderOrigin | None = None
    start: datetime | None = None
    end: datetime | None = None


def _reach_condition(query: Select[Any], reach: Reach) -> Select[Any]:
    if reach.household_ids is not None:
        return query.where(PaymentOrder.household_id.in_(list(reach.household_ids)))  # type: ignore[attr-defined]
    if reach.scope_patterns is not None:
        patterns = list(reach.scope_patterns)
        if not patterns:
            return query.where(text("false"))
        from backend.auth.scope import in_scope

        return (query.join(Household, Household.id == PaymentOrder.household_id)  # type: ignore[arg-type]
                .join(Area, Area.id == Household.area_id)  # type: ignore[arg-type]
                .where(in_scope(Area.path, patterns)))
    return query


async def find_order(session: AsyncSession, *, reach: Reach, order_id: int | None = None,
                     out_trade_no: str | None = None) -> PaymentOrder:
    """One order by id or ``out_trade_no`` in the caller's reach (NOT_FOUND otherwise)."""
    query = select(PaymentOrder)
    if order_id is not None:
        query = query.where(PaymentOrder.id == order_id)  # type: ignore[arg-type]
    elif out_trade_no is not None:
        query = query.where(PaymentOrder.out_trade_no == out_trade_no)  # type: ignore[arg-type]
    else:
        raise NotFound(field="id")
    found = (await session.execute(_reach_condition(query, reach))).scalar_one_or_none()
    if found is None:
        raise NotFound(field="id" if order_id is not None else "outTradeNo")
    return found  # type: ignore[no-any-return]


async def order_page(session: AsyncSession, *, reach: Reach, order_filter: OrderFilter, offset: int,
                     limit: int) -> tuple[list[PaymentOrder], int]:
    """The orders of the filter in the caller's reach, newest first: one page and the count."""
    query = _reach_condition(select(PaymentOrder), reach)
    f = order_filter
    for column, value in ((PaymentOrder.household_id, f.household_id), (PaymentOrder.state, f.state),
                          (PaymentOrder.channel, f.channel), (PaymentOrder.origin, f.origin)):
        if value is not None:
            query = query.where(column == value)  # type: ignore[arg-type]
    if f.start is not None:
        query = query.where(PaymentOrder.created_at >= f.start)  # type: ignore[arg-type,operator]
    if f.end is not None:
        query = query.where(PaymentOrder.created_at < f.end)  # type: ignore[arg-type,operator]
    total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
    rows = (await session.execute(query.order_by(PaymentOrder.id.desc()).offset(offset).limit(limit)))  # type: ignore[union-attr]
    return list(rows.scalars().all()), int(total)


def idempotency_digest(*parts: object) -> str:
    """A short stable key of ``parts`` (for callers that derive a key from a request)."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:40]
