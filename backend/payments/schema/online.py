"""GraphQL of online payments (在线支付): ``createPaymentOrder`` (a resident for their own
households), the counter's ``counterBarcodePay`` and
``counterQrOrder``, and the ``paymentOrder`` / ``paymentOrders`` queries. Thin: the rules
live in ``backend.payments.online`` (orders, counter_online). Each mutation writes its
order and audit entry in one transaction; the gateway is asked after that commit, and
its refusal comes back as a payload error with the order (state failed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import datetime
from functools import partial
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.domain import settings_group_key
from backend.errors import BadUserInput, DomainError
from backend.events.service import Event, payload_of
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest
from backend.graphql.permissions import Requires, RequiresAny
from backend.graphql.relay import Node, decode_id, encode_id
from backend.graphql.scalars import Money
from backend.graphql.subscriptions import SubscriptionEvent, event_id_of, event_items, parse_event_id
from backend.payments.counter import Operator
from backend.payments.events import PaymentOrderChanged
from backend.payments.models import PaymentChannel, PaymentPurpose
from backend.payments.online import counter_online, orders
from backend.payments.online.gateway import ClientPayload, PayloadKind
from backend.payments.online.models import OrderOrigin, OrderScene, OrderState, PaymentOrder
from backend.payments.online.registry import online_payments
from backend.payments.schema.types import (
    AccountByIdLoader,
    AccountRef,
    PaymentChannelEnum,
    PaymentPurposeEnum,
    PaymentRowByIdLoader,
    PaymentType,
    account_type,
)

OrderSceneEnum = strawberry.enum(OrderScene, name="PaymentScene", description=(
    "支付场景. Alipay: app, wap (H5), page (desktop), qr (precreate); WeChat: app, h5 (MWEB), jsapi (inside WeChat, "
    "needs the payer's openid), native (QR); both: barcode (付款码, the counter's)."))
OrderStateEnum = strawberry.enum(OrderState, name="PaymentOrderState", description="created → paid | closed | failed")
OrderOriginEnum = strawberry.enum(OrderOrigin, name="PaymentOrderOrigin", description="Who started the order.")
PayloadKindEnum = strawberry.enum(PayloadKind, name="PaymentPayloadKind", description=(
    "order_string (Alipay app SDK), pay_url (open it: wap, page, h5), jsapi (WeixinJSBridge parameters), "
    "app_params (WeChat app SDK), code_url (show as a QR), none (barcode)."))

# A resident pays their own households (the counter has counterQrOrder / counterBarcodePay;
# the pay page, with no login, calls the service itself).
PAY = [Requires("resident:self")]
COLLECT = [Requires("counter:collect")]
READ = [RequiresAny("payments:read", "resident:self", "counter:collect")]


@strawberry.type(name="PaymentParameter", description="One signed parameter (jsapi, app_params).")
class PaymentParameterType:
    name: str
    value: str


@strawberry.type(name="PaymentClientPayload", description="What the payer's client pays with.")
class ClientPayloadType:
    kind: PayloadKindEnum  # type: ignore[valid-type]
    url: str | None = strawberry.field(description="pay_url, code_url or the order string.")
    parameters: list[PaymentParameterType] | None = strawberry.field(
        description="jsapi / app_params: the signed parameters, as the gateway gave them (appId, timeStamp, nonceStr, "
        "package, signType, paySign…).")

    @classmethod
    def of(cls, payload: ClientPayload | None) -> ClientPayloadType | None:
        if payload is None:
            return None
        if isinstance(payload.value, str):
            return cls(kind=payload.kind, url=payload.value, parameters=None)
        return cls(kind=payload.kind, url=None,
                   parameters=[PaymentParameterType(name=k, value=str(v)) for k, v in payload.value.items()])


@strawberry.type(name="PaymentOrder", description="An online payment order (支付订单): created → paid (a verified "
                 "notification, an active query, a barcode payment) | closed (expired, cancelled) | failed.")
class PaymentOrderType(Node):
    out_trade_no: str = strawberry.field(description="商户订单号: SW + the day + the id.")
    channel: PaymentChannelEnum  # type: ignore[valid-type]
    scene: OrderSceneEnum  # type: ignore[valid-type]
    origin: OrderOriginEnum  # type: ignore[valid-type]
    purpose: PaymentPurposeEnum  # type: ignore[valid-type]
    amount: Money  # type: ignore[valid-type]
    state: OrderStateEnum  # type: ignore[valid-type]
    subject: str = strawberry.field(description="商品描述 the payer sees.")
    merchant: str = strawberry.field(description="The merchant's name in the merchants file.")
    trade_no: str | None = strawberry.field(description="The gateway's transaction id, once paid.")
    failure: str | None
    created_at: datetime
    expires_at: datetime
    paid_at: datetime | None
    closed_at: datetime | None
    payload: ClientPayloadType | None = strawberry.field(description="What the payer pays with (null: barcode).")
    payment_pk: strawberry.Private[int | None]
    account_pk: strawberry.Private[int]

    @classmethod
    def from_row(cls, order: PaymentOrder) -> PaymentOrderType:
        assert order.id is not None
        return cls(id=encode_id("PaymentOrder", order.id), out_trade_no=order.out_trade_no, channel=order.channel,
                   scene=order.scene, origin=order.origin, purpose=order.purpose, amount=order.amount_fen,
                   state=order.state, subject=order.subject, merchant=order.merchant, trade_no=order.trade_no,
                   failure=order.failure, created_at=order.created_at, expires_at=order.expires_at,
                   paid_at=order.paid_at, closed_at=order.closed_at,
                   payload=ClientPayloadType.of(orders.payload_of(order)), payment_pk=order.payment_id,
                   account_pk=order.account_id)

    @strawberry.field(description="The payment it became (paid only).")
    async def payment(self, info: Info) -> PaymentType | None:
        if self.payment_pk is None:
            return None
        row = await info.context.loader(PaymentRowByIdLoader).load(self.payment_pk)
        return PaymentType.from_list_row(row) if row is not None else None

    @strawberry.field(description="The account it pays.")
    async def account(self, info: Info) -> AccountRef | None:
        account = await info.context.loader(AccountByIdLoader).load(self.account_pk)
        return account_type(info, account) if account is not None else None


@strawberry.type
class PaymentOrderPayload:
    order: PaymentOrderType | None
    errors: list[UserError]


def _reach(info: Info) -> orders.Reach:
    caller: Principal = info.context.caller
    if caller.is_resident:
        return orders.Reach(household_ids=list(caller.household_ids))
    return orders.Reach(scope_patterns=caller.scope_patterns())


def _created_by(caller: Principal) -> str:
    return f"resident:{caller.id}" if caller.is_resident else caller.name[:100]


def _operator(info: Info) -> Operator:
    caller: Principal = info.context.caller
    return Operator(caller.id if caller.kind is PrincipalKind.staff else None, caller.name)


def _order_payload(order: PaymentOrder | None, errors: list[UserError]) -> PaymentOrderPayload:
    return PaymentOrderPayload(order=PaymentOrderType.from_row(order) if order is not None else None, errors=errors)


async def _reread(info: Info, order_id: int) -> PaymentOrder | None:
    async with info.context.write() as session:
        found: PaymentOrder | None = await session.get(PaymentOrder, order_id)
        return found


async def _after_commit(info: Info, opened: PaymentOrderPayload, order: PaymentOrder | None, ask_gateway: Any
                        ) -> PaymentOrderPayload:
    """Ask the gateway once the order committed; its refusal is a payload error beside the order."""
    if order is None or opened.errors:
        return opened
    assert order.id is not None
    try:
        await ask_gateway(order)
    except DomainError as refused:
        return _order_payload(await _reread(info, order.id), UserError.from_domain(refused))
    return _order_payload(await _reread(info, order.id), [])


def _ids(household_id: strawberry.ID | None, account_no: str | None) -> tuple[int | None, str | None]:
    if (household_id is None) == (account_no is None):
        raise BadUserInput("请指定户号或缴费号之一", "Give householdId or accountNo, not both", field="householdId")
    return (decode_id(household_id, "Household", field="householdId") if household_id is not None else None,
            account_no)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=PAY, description=(
        "Open an online payment order for one of your households and return what the payer pays with (order "
        "string, pay URL, JSAPI parameters, code_url). Refused: PAYMENT_AMOUNT_INVALID, "
        "PAYMENT_ONLINE_ABOVE_MAXIMUM, PAYMENT_CHANNEL_UNAVAILABLE, PAYMENT_SCENE_UNSUPPORTED (barcode is "
        "counterBarcodePay's), PAYMENT_OPENID_REQUIRED (jsapi), PAYMENT_H5_IN_WECHAT, PAYMENT_ACCOUNT_NOT_PAYABLE, "
        "IDEMPOTENCY_CONFLICT; a gateway failure (GATEWAY_*) comes back with the order, failed."))
    async def create_payment_order(
        self, info: Info, amount: Money, purpose: PaymentPurposeEnum, channel: PaymentChannelEnum,  # type: ignore[valid-type]
        scene: OrderSceneEnum, household_id: strawberry.ID | None = None,  # type: ignore[valid-type]
        account_no: str | None = None, openid: str | None = None, return_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> PaymentOrderPayload:
        context = info.context
        online = online_payments(context.services)
        caller: Principal = context.caller
        origin = OrderOrigin.resident if caller.is_resident else OrderOrigin.counter
        kept: list[PaymentOrder] = []

        async def work(session: AsyncSession) -> PaymentOrder:
            household, number = _ids(household_id, account_no)
            order, _ = await orders.open_order(session, online=online, now=utcnow(), tz=context.settings.tz,
                                               reach=_reach(info), ask=orders.OrderAsk(
                amount_fen=amount, purpose=PaymentPurpose(purpose), channel=PaymentChannel(channel),
                scene=OrderScene(scene), origin=origin, created_by=_created_by(caller), household_id=household,
                account_no=number, openid=openid, client_ip=context.ip, user_agent=context.user_agent,
                return_url=return_url, idempotency_key=idempotency_key,
                operator_id=caller.id if origin is OrderOrigin.counter and caller.kind is PrincipalKind.staff else None))
            kept.append(order)
            return order

        opened = await run_mutation(info, action="createPaymentOrder", payload=_order_payload, work=work,
                                    describe=lambda o: f"在线支付下单 {o.out_trade_no}" if o else "在线支付下单")

        async def ask(order: PaymentOrder) -> None:
            await orders.request_payload(context.sessions, online=online, services=context.services, order=order,
                                         now=utcnow(), return_url=return_url)

        return await _after_commit(info, opened, kept[0] if kept else None, ask)

    @strawberry.mutation(permission_classes=COLLECT, description=(
        "付款码: take a payment with the payer's payment code (Alipay 25-30…, WeChat 10-15…, 16-24 digits: else "
        "PAYMENT_CODE_INVALID). Waits while the payer confirms (USERPAYING), at most "
        "SHUIWU_PAYMENTS_BARCODE_DEADLINE_S (45 s), then cancels: PAYMENT_DECLINED. The payment counts in your day "
        "(日结) under its channel."))
    async def counter_barcode_pay(self, info: Info, account_id: strawberry.ID, amount: Money,  # type: ignore[valid-type]
                                  purpose: PaymentPurposeEnum, auth_code: str,  # type: ignore[valid-type]
                                  idempotency_key: str | None = None) -> PaymentOrderPayload:
        context = info.context
        online = online_payments(context.services)
        kept: list[PaymentOrder] = []

        async def work(session: AsyncSession) -> PaymentOrder:
            order = await counter_online.open_barcode_order(
                session, online=online, account_id=decode_id(account_id, "Account", field="accountId"),
                amount_fen=amount, purpose=PaymentPurpose(purpose), auth_code=auth_code[:64],
                operator=_operator(info), now=utcnow(), tz=context.settings.tz, idempotency_key=idempotency_key,
                scope_patterns=context.caller.scope_patterns())
            kept.append(order)
            return order

        opened = await run_mutation(info, action="counterBarcodePay", payload=_order_payload, work=work,
                                    describe=lambda o: f"付款码收款 {o.out_trade_no}" if o else "付款码收款",
                                    audit_input={"accountId": account_id, "amount": amount, "purpose": purpose})

        payments = context.services.get(settings_group_key("payments"))
        poll_s = payments.barcode_poll_s if payments is not None else counter_online.DEFAULT_POLL_S
        deadline_s = payments.barcode_deadline_s if payments is not None else counter_online.DEFAULT_DEADLINE_S

        async def take(order: PaymentOrder) -> None:
            await counter_online.take_barcode_payment(context.sessions, online=online, services=context.services,
                                                      order=order, auth_code=auth_code[:64], clock=utcnow,
                                                      tz=context.settings.tz, sleep=asyncio.sleep, poll_s=poll_s,
                                                      deadline_s=deadline_s)

        return await _after_commit(info, opened, kept[0] if kept else None, take)

    @strawberry.mutation(permission_classes=COLLECT, description=(
        "The counter's dynamic QR: an Alipay qr / WeChat native order whose payload.url the screen shows; follow it "
        "with paymentOrder (state) or the payment_order.changed event."))
    async def counter_qr_order(self, info: Info, account_id: strawberry.ID, amount: Money,  # type: ignore[valid-type]
                               purpose: PaymentPurposeEnum, channel: PaymentChannelEnum,  # type: ignore[valid-type]
                               idempotency_key: str | None = None) -> PaymentOrderPayload:
        context = info.context
        online = online_payments(context.services)
        kept: list[PaymentOrder] = []

        async def work(session: AsyncSession) -> PaymentOrder:
            order = await counter_online.open_qr_order(
                session, online=online, channel=PaymentChannel(channel),
                account_id=decode_id(account_id, "Account", field="accountId"), amount_fen=amount,
                purpose=PaymentPurpose(purpose), operator=_operator(info), now=utcnow(), tz=context.settings.tz,
                idempotency_key=idempotency_key, scope_patterns=context.caller.scope_patterns())
            kept.append(order)
            return order

        opened = await run_mutation(info, action="counterQrOrder", payload=_order_payload, work=work,
                                    describe=lambda o: f"扫码收款 {o.out_trade_no}" if o else "扫码收款")

        async def ask(order: PaymentOrder) -> None:
            await orders.request_payload(context.sessions, online=online, services=context.services, order=order,
                                         now=utcnow())

        return await _after_commit(info, opened, kept[0] if kept else None, ask)


@strawberry.input(description="Filters of paymentOrders; each left out filters nothing.")
class PaymentOrderFilterInput:
    household_id: strawberry.ID | None = None
    state: OrderStateEnum | None = None  # type: ignore[valid-type]
    channel: PaymentChannelEnum | None = None  # type: ignore[valid-type]
    origin: OrderOriginEnum | None = None  # type: ignore[valid-type]
    from_: datetime | None = strawberry.field(default=None, name="from", description="Created at or after.")
    to: datetime | None = strawberry.field(default=None, description="Created before.")

    def to_filter(self) -> orders.OrderFilter:
        return orders.OrderFilter(
            household_id=decode_id(self.household_id, "Household", field="householdId") if self.household_id else None,
            state=OrderState(self.state) if self.state else None,
            channel=PaymentChannel(self.channel) if self.channel else None,
            origin=OrderOrigin(self.origin) if self.origin else None, start=self.from_, end=self.to)


async def fetch_order(context: Any, pk: int) -> PaymentOrderType | None:
    """An order of the caller's reach (a resident's own households, a staff caller's areas)."""
    principal: Principal | None = context.principal
    if principal is None or not (principal.has("payments:read") or principal.has("resident:self")
                                 or principal.has("counter:collect")):
        return None
    reach = (orders.Reach(household_ids=list(principal.household_ids)) if principal.is_resident
             else orders.Reach(scope_patterns=principal.scope_patterns()))
    async with context.read() as session:
        try:
            return PaymentOrderType.from_row(await orders.find_order(session, reach=reach, order_id=pk))
        except DomainError:
            return None


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ, description="One order by id or outTradeNo: yours (a resident) or "
                      "of your areas. The counter's QR screen and the pay page's result follow it.")
    async def payment_order(self, info: Info, id: strawberry.ID | None = None,
                            out_trade_no: str | None = None) -> PaymentOrderType:
        async with info.context.read() as session:
            order = await orders.find_order(session, reach=_reach(info), out_trade_no=out_trade_no,
                                            order_id=decode_id(id, "PaymentOrder") if id is not None else None)
        return PaymentOrderType.from_row(order)

    @strawberry.field(permission_classes=READ, description="Orders of your households (a resident) or your areas, "
                      "newest first.")
    async def payment_orders(self, info: Info, filter: PaymentOrderFilterInput | None = None,
                             first: int | None = None, after: str | None = None) -> Connection[PaymentOrderType]:
        page = PageRequest.from_args(first, after)
        async with info.context.read() as session:
            rows, total = await orders.order_page(session, reach=_reach(info), offset=page.offset, limit=page.limit,
                                                  order_filter=filter.to_filter() if filter else orders.OrderFilter())
        return Connection.from_page([PaymentOrderType.from_row(o) for o in rows], total=total, offset=page.offset)


@strawberry.type(description="A payment order of yours changed state (支付结果): its state now.")
class PaymentOrderChangedEvent(SubscriptionEvent):
    order: PaymentOrderType


async def changed_order(context: Context, event: Event, *, order_pk: int | None) -> PaymentOrderChangedEvent | None:
    """The order ``event`` is about, when it is of the resident's own households (and the
    one asked for, if any); None otherwise. Read as it stands now."""
    changed = payload_of(event, PaymentOrderChanged)
    if order_pk is not None and changed.order_id != order_pk:
        return None
    caller = context.caller
    reach = orders.Reach(household_ids=list(caller.household_ids))
    async with context.read() as session:
        try:
            order = await orders.find_order(session, reach=reach, order_id=changed.order_id)
        except DomainError:
            return None
    return PaymentOrderChangedEvent(event_id=event_id_of(event), order=PaymentOrderType.from_row(order))


@strawberry.type
class Subscription:
    @strawberry.subscription(
        permission_classes=PAY,
        description="The result of your payment orders (a resident): one item per change of state (created, paid, "
        "closed, failed) of an order of your households, or only of orderId. With afterEventId, the stored "
        "changes after it come first.")
    async def payment_order_changed(
        self, info: Info, order_id: strawberry.ID | None = None, after_event_id: strawberry.ID | None = None,
    ) -> AsyncGenerator[PaymentOrderChangedEvent, None]:
        after = parse_event_id(after_event_id)
        order_pk = decode_id(order_id, "PaymentOrder", field="orderId") if order_id is not None else None
        return event_items(info.context, kinds=("payment_order.changed",), permission="resident:self", after=after,
                           visible=partial(changed_order, order_pk=order_pk))


NODES = {"PaymentOrder": fetch_order}
