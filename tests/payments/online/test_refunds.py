"""Refunds through the original channel (原路退款): the split's arithmetic and the
requests it writes (newest payment first, the remainder at the counter, nothing posted);
then, against the local Alipay and WeChat Pay over HTTP, refunds reaching the gateways
and posting when they confirm (Alipay at once; WeChat v3 and v2 processing, then settled
by the job), a refused refund failed with an alarm, and over GraphQL ``refundPayment``
and ``closeAccount`` sending the refunds right after the commit, the account open until
they settle and the rest paid at the counter."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.archives.models import Area
from backend.billing.models import EntryKind
from backend.clock import utcnow
from backend.db import transaction
from backend.errors import DomainError, ErrorCode
from backend.graphql.relay import encode_id
from backend.payments.counter import Operator, take_payment
from backend.payments.models import Payment, PaymentChannel, PaymentPurpose
from backend.payments.online.merchants import MerchantsInvalid, WechatMerchant, load_merchants
from backend.payments.online.models import RefundState
from backend.payments.online.refunds import (
    Refundable,
    query_open_refunds,
    refund_online,
    request_online_refunds,
    split_refund,
)
from tests.billing.factories import Served, at, balance, entries, ledger_sum, served_household, tariff
from tests.factories import make_staff
from tests.graphql.client import GraphQLClient, graphql_client
from tests.payments.online.refund_helpers import (
    Fakes,
    local_gateways,
    paid_at_fake,
    paid_order,
    write_refund_merchants,
)

NOW = at(2026, 12, 10, 10)
ALIPAY, WECHAT = PaymentChannel.alipay, PaymentChannel.wechat


def refundable(payment_id: int, fen: int) -> Refundable:
    return Refundable(payment_id=payment_id, order_id=payment_id, out_trade_no=f"SW{payment_id}", channel=ALIPAY,
                      merchant="demo", purpose=PaymentPurpose.recharge, total_fen=fen, refundable_fen=fen, paid_at=NOW,
                      refund_failed=False)


def test_a_split_takes_each_payment_in_order_up_to_what_it_has_left_and_returns_the_rest() -> None:
    newest, older = refundable(2, 2000), refundable(1, 5000)
    assert split_refund(1500, [newest, older]) == ([(newest, 1500)], 0)
    assert split_refund(6000, [newest, older]) == ([(newest, 2000), (older, 4000)], 0)
    assert split_refund(9000, [newest, older]) == ([(newest, 2000), (older, 5000)], 2000)
    assert split_refund(100, []) == ([], 100)


async def cash(session: AsyncSession, served: Served, fen: int, when: datetime) -> Payment:
    return await take_payment(session, account_id=served.account_id, channel=PaymentChannel.cash,
                              purpose=PaymentPurpose.recharge, amount_fen=fen, confirm_amount_fen=fen,
                              idempotency_key=f"cash:{served.account_id}:{fen}", operator=Operator(None, "收费员"),
                              now=when)


async def household_with_payments(session: AsyncSession) -> tuple[Served, list[Payment]]:
    """Paid in this order: alipay 30.00, wechat 50.00, cash 100.00, alipay 20.00 (balance 200.00)."""
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    assert served.household.id is not None
    payments = []
    for channel, fen, day in ((ALIPAY, 3000, 2), (WECHAT, 5000, 3), (None, 10000, 4), (ALIPAY, 2000, 5)):
        when = at(2026, 12, day, 9)
        if channel is None:
            payments.append(await cash(session, served, fen, when))
        else:
            payments.append((await paid_order(session, account_id=served.account_id, household_id=served.household.id,
                                              channel=channel, fen=fen, at=when))[1])
    return served, payments


async def test_a_refund_is_split_over_the_online_payments_newest_first_and_the_rest_is_the_counters(
        session: AsyncSession) -> None:
    served, (alipay_old, wechat, _, alipay_new) = await household_with_payments(session)
    plan = await request_online_refunds(session, account_id=served.account_id, amount_fen=15000, reason="销户退费",
                                        by="收费员", now=NOW)
    parts = [(r.order_id, r.amount_fen, r.state) for r in plan.refunds]
    orders: dict[int | None, int] = dict((await session.execute(text(
        "SELECT payment_id, id FROM payment_orders WHERE account_id = :a"),
                                         {"a": served.account_id})).all())
    assert parts == [(orders[alipay_new.id], 2000, RefundState.requested),
                     (orders[wechat.id], 5000, RefundState.requested),
                     (orders[alipay_old.id], 3000, RefundState.requested)]
    assert plan.remainder_fen == 5000
    assert all(r.out_refund_no == f"RF20261210{r.id:010d}" for r in plan.refunds)
    # Requested is not refunded: nothing is posted until a gateway confirms.
    assert await balance(session, served.account_id) == 20000
    # What is in flight is spoken for: the same again finds only the counter's money, and the
    # balance less what is in flight (100.00) caps a refund.
    again = await request_online_refunds(session, account_id=served.account_id, amount_fen=5000, reason="错缴",
                                         by="收费员", now=NOW)
    assert again.refunds == () and again.remainder_fen == 5000
    with pytest.raises(DomainError) as refused:
        await request_online_refunds(session, account_id=served.account_id, amount_fen=10001, reason="错缴", by="x",
                                     now=NOW)
    assert (refused.value.code, refused.value.field) == (ErrorCode.REFUND_ABOVE_REFUNDABLE, "amount")


async def test_a_mistaken_payment_goes_back_only_through_its_own_channel(session: AsyncSession) -> None:
    served, (_, wechat, cash_payment, _) = await household_with_payments(session)
    plan = await request_online_refunds(session, account_id=served.account_id, amount_fen=4000, reason="错缴",
                                        by="收费员", now=NOW, payment_id=wechat.id)
    assert [r.amount_fen for r in plan.refunds] == [4000] and plan.remainder_fen == 0
    for payment_id, fen, code in ((wechat.id, 1001, ErrorCode.REFUND_ABOVE_REFUNDABLE),
                                  (cash_payment.id, 100, ErrorCode.REFUND_NOT_POSSIBLE),
                                  (10**12, 100, ErrorCode.REFUND_NOT_POSSIBLE)):
        with pytest.raises(DomainError) as refused:
            await request_online_refunds(session, account_id=served.account_id, amount_fen=fen, reason="错缴",
                                         by="收费员", now=NOW, payment_id=payment_id)
        assert refused.value.code is code
    # Older than a year: the platforms refuse it, so it is not offered.
    with pytest.raises(DomainError) as refused:
        await request_online_refunds(session, account_id=served.account_id, amount_fen=100, reason="错缴",
                                     by="收费员", now=NOW + timedelta(days=400), payment_id=wechat.id)
    assert refused.value.code is ErrorCode.REFUND_NOT_POSSIBLE


# --------------------------------------------------------------------------- against the local gateways


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fakes]:
    with local_gateways(tmp_path_factory.mktemp("refund-merchants")) as running:
        yield running


async def new_household(sessions: async_sessionmaker[AsyncSession]) -> Served:
    async with transaction(sessions) as session:
        return await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))


async def money(sessions: async_sessionmaker[AsyncSession], account_id: int) -> tuple[int, int]:
    async with sessions() as session:
        return await balance(session, account_id), await ledger_sum(session, account_id)


async def refunds_of(sessions: async_sessionmaker[AsyncSession], account_id: int) -> list[tuple[str, int, str]]:
    async with sessions() as session:
        rows = await session.execute(text(
            "SELECT o.channel, r.amount_fen, r.state FROM payment_refunds r JOIN payment_orders o ON o.id = r.order_id "
            "WHERE r.account_id = :a ORDER BY r.id"), {"a": account_id})
        return [tuple(row) for row in rows.all()]  # type: ignore[misc]


def later() -> datetime:
    """The job's clock: past the grace it leaves a refund just requested."""
    return utcnow() + timedelta(minutes=1)


async def test_a_refund_through_each_channel_reaches_the_gateway_and_posts_when_it_confirms(
        committed_sessions: async_sessionmaker[AsyncSession], fakes: Fakes) -> None:
    served = await new_household(committed_sessions)
    assert served.household.id is not None
    payments = {}
    for channel, merchant, fen in ((ALIPAY, "demo", 3000), (WECHAT, "demo", 2000), (WECHAT, "certified", 1000)):
        order, payment = await paid_at_fake(committed_sessions, fakes, account_id=served.account_id,
                                            household_id=served.household.id, channel=channel, fen=fen,
                                            merchant=merchant)
        assert payment is not None
        payments[merchant if channel is WECHAT else "alipay"] = (order, payment)

    done = {}
    for name, fen in (("alipay", 1000), ("demo", 500), ("certified", 400)):
        order, payment = payments[name]
        done[name] = await refund_online(committed_sessions, fakes.services, account_id=served.account_id,
                                         amount_fen=fen, reason="错缴", by="收费员", now=utcnow, payment_id=payment.id)

    # Alipay refunds at once; WeChat (v3, and v2 with its client certificate) answers processing.
    assert [(r.amount_fen, r.state) for r in done["alipay"].refunds] == [(1000, RefundState.succeeded)]
    assert [r.state for r in done["demo"].refunds + done["certified"].refunds] == [RefundState.requested] * 2
    assert await money(committed_sessions, served.account_id) == (5000, 5000)
    assert fakes.orders(ALIPAY)[payments["alipay"][0].out_trade_no]["refunded_fen"] == 1000

    await query_open_refunds(committed_sessions, fakes.services, now=later)

    assert sorted(await refunds_of(committed_sessions, served.account_id)) == [
        ("alipay", 1000, "succeeded"), ("wechat", 400, "succeeded"), ("wechat", 500, "succeeded")]
    assert await money(committed_sessions, served.account_id) == (4100, 4100)
    wechat_orders = fakes.orders(WECHAT)
    assert [wechat_orders[payments[name][0].out_trade_no]["refunded_fen"] for name in ("demo", "certified")] == [500, 400]
    async with committed_sessions() as session:
        refunds = [e.amount_fen for e in await entries(session, served.account_id) if e.kind == EntryKind.refund]
        kinds = (await session.execute(text("SELECT kind, channel FROM payments WHERE account_id = :a AND kind = 'refund'"),
                                       {"a": served.account_id})).all()
    assert sorted(refunds) == [-1000, -500, -400]
    assert sorted(tuple(k) for k in kinds) == [("refund", "alipay"), ("refund", "wechat"), ("refund", "wechat")]


async def test_a_refused_refund_fails_posts_nothing_and_opens_an_alarm(
        committed_sessions: async_sessionmaker[AsyncSession], fakes: Fakes) -> None:
    served = await new_household(committed_sessions)
    assert served.household.id is not None
    _, payment = await paid_at_fake(committed_sessions, fakes, account_id=served.account_id,
                                    household_id=served.household.id, channel=ALIPAY, fen=2000)
    assert payment is not None
    await asyncio.to_thread(httpx.post, f"{fakes.alipay}/_control/next",
                            json={"action": "refuse", "body": "ACQ.SELLER_BALANCE_NOT_ENOUGH"})

    done = await refund_online(committed_sessions, fakes.services, account_id=served.account_id, amount_fen=2000,
                               reason="错缴", by="收费员", now=utcnow, payment_id=payment.id)

    [refund] = done.refunds
    assert refund.state is RefundState.failed and "SELLER_BALANCE_NOT_ENOUGH" in (refund.failure or "")
    assert await money(committed_sessions, served.account_id) == (2000, 2000)
    async with committed_sessions() as session:
        alarms = (await session.execute(text(
            "SELECT kind, status FROM alarms WHERE subject_kind = 'payment' AND subject_id = :o"),
            {"o": refund.order_id})).all()
    assert [tuple(a) for a in alarms] == [("refund_failed", "open")]


REFUND = """
mutation($paymentId: ID!, $amount: Money!, $reason: String!) {
  refundPayment(paymentId: $paymentId, amount: $amount, reason: $reason) {
    refunds { outRefundNo outTradeNo channel merchant amount state refundPaymentId }
    errors { field code }
  }
}"""
CLOSE = """
mutation($input: CloseAccountInput!) {
  closeAccount(input: $input) {
    account { id status balance } refund { channel amount }
    onlineRefunds { outTradeNo channel amount state }
    errors { field code }
  }
}"""


@pytest.fixture(scope="module")
async def api(database_url: str, fakes: Fakes) -> AsyncIterator[GraphQLClient]:
    saved = dict(os.environ)
    os.environ.update(fakes.environment)
    try:
        async with graphql_client(database_url) as client:
            yield client
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def test_refund_payment_and_close_account_over_graphql_send_the_refunds_at_once(
        committed_sessions: async_sessionmaker[AsyncSession], fakes: Fakes, api: GraphQLClient) -> None:
    served = await new_household(committed_sessions)
    assert served.household.id is not None
    async with transaction(committed_sessions) as session:
        area = await session.get(Area, served.household.area_id)
        assert area is not None
        staff = await make_staff(session, permissions={"counter:refund_online", "counter:close_account",
                                                       "counter:collect", "payments:read"}, areas=[area])
        await cash(session, served, 10000, utcnow())
    token = await api.login(staff.username, staff.password)
    wechat_order, _ = await paid_at_fake(committed_sessions, fakes, account_id=served.account_id,
                                         household_id=served.household.id, channel=WECHAT, fen=5000)
    alipay_order, alipay = await paid_at_fake(committed_sessions, fakes, account_id=served.account_id,
                                              household_id=served.household.id, channel=ALIPAY, fen=2000)
    assert alipay is not None and alipay.id is not None

    refunded = await api.execute(REFUND, {"paymentId": encode_id("Payment", alipay.id), "amount": "5.00",
                                          "reason": "错缴"}, token=token)

    payload = refunded["data"]["refundPayment"]
    assert payload["errors"] == []
    [row] = payload["refunds"]
    assert (row["outTradeNo"], row["channel"], row["amount"], row["state"]) == (alipay_order.out_trade_no, "alipay",
                                                                              "5.00", "succeeded")
    assert row["outRefundNo"].startswith("RF") and row["refundPaymentId"]
    assert fakes.orders(ALIPAY)[alipay_order.out_trade_no]["refunded_fen"] == 500
    again = await api.execute(REFUND, {"paymentId": encode_id("Payment", alipay.id), "amount": "15.01",
                                       "reason": "错缴"}, token=token)
    assert again["data"]["refundPayment"]["errors"] == [{"field": "amount", "code": "REFUND_ABOVE_REFUNDABLE"}]

    close = {"input": {"accountId": encode_id("Account", served.account_id), "idempotencyKey": f"close-{served.account_id}"}}
    first = (await api.execute(CLOSE, close, token=token))["data"]["closeAccount"]

    # Newest payment first, each through its own channel; the account waits for them.
    assert first["errors"] == [] and first["refund"] is None and first["account"]["status"] == "open"
    assert [(r["outTradeNo"], r["channel"], r["amount"], r["state"]) for r in first["onlineRefunds"]] == [
        (alipay_order.out_trade_no, "alipay", "15.00", "succeeded"),
        (wechat_order.out_trade_no, "wechat", "50.00", "requested")]
    # Cash 100 + WeChat 50 + Alipay 20, less Alipay's 5 and 15: WeChat's 50 is not confirmed yet.
    assert await money(committed_sessions, served.account_id) == (15000, 15000)
    still = (await api.execute(CLOSE, {"input": {**close["input"], "idempotencyKey": "again"}}, token=token))
    assert still["data"]["closeAccount"]["errors"] == [{"field": "id", "code": "REFUND_NOT_POSSIBLE"}]

    await query_open_refunds(committed_sessions, fakes.services, now=later)
    closed = (await api.execute(CLOSE, {"input": {**close["input"], "idempotencyKey": "last"}},
                                token=token))["data"]["closeAccount"]

    # The counter pays the rest (the cash paid in): the account closes at zero.
    assert closed["errors"] == [] and closed["onlineRefunds"] == []
    assert closed["account"]["status"] == "closed" and closed["refund"] == {"channel": "cash", "amount": "100.00"}
    assert await money(committed_sessions, served.account_id) == (0, 0)


def test_a_v2_merchants_client_certificate_is_a_pair_of_pem_files(tmp_path: Path) -> None:
    merchants_file = write_refund_merchants(tmp_path)
    certified = load_merchants(merchants_file).named(WECHAT, "certified")
    assert isinstance(certified, WechatMerchant) and certified.client_cert == str(tmp_path / "apiclient_cert.pem")
    assert certified.client_key == str(tmp_path / "apiclient_key.pem")

    (tmp_path / "not_a_cert.pem").write_text("hello", encoding="utf-8")
    wrong = tmp_path / "wrong.toml"
    entries_with = (
        ("bad", 'client_cert = { file = "not_a_cert.pem" }\nclient_key = { file = "apiclient_key.pem" }'),
        ("half", 'client_cert = { file = "apiclient_cert.pem" }'),
        ("env", 'client_cert = { env = "CERT" }\nclient_key = { file = "apiclient_key.pem" }'))
    wrong.write_text('public_base_url = "http://127.0.0.1:9"\n\n' + "".join(
        f'[[wechat]]\nname = "{name}"\napi = "v2"\napp_id = "wx000000000000000{n}"\nmch_id = "123000000{n}"\n'
        f'api_key = {{ file = "wechat_v2_api_key" }}\n{extra}\n\n' for n, (name, extra) in enumerate(entries_with)),
        encoding="utf-8")
    with pytest.raises(MerchantsInvalid) as refused:
        load_merchants(wrong, environ={"CERT": "x"})
    assert [line.removeprefix(f"{wrong}: ") for line in refused.value.lines] == [
        f"[[wechat]] #1: `client_cert`: {tmp_path / 'not_a_cert.pem'} holds no PEM CERTIFICATE",
        "[[wechat]] #2: `client_cert` and `client_key` go together (refunds need both)",
        '[[wechat]] #3: `client_cert` must be { file = "path" }',
    ]


async def test_refund_payment_without_counter_refund_online_is_refused_and_writes_nothing(
        committed_sessions: async_sessionmaker[AsyncSession], fakes: Fakes, api: GraphQLClient) -> None:
    served = await new_household(committed_sessions)
    assert served.household.id is not None
    async with transaction(committed_sessions) as session:
        area = await session.get(Area, served.household.area_id)
        assert area is not None
        # Everything a cashier has but the refund permission.
        staff = await make_staff(session, permissions={"counter:collect", "counter:close_account", "payments:read"},
                                 areas=[area])
    token = await api.login(staff.username, staff.password)
    order, alipay = await paid_at_fake(committed_sessions, fakes, account_id=served.account_id,
                                       household_id=served.household.id, channel=ALIPAY, fen=2000)
    assert alipay is not None and alipay.id is not None
    before = await money(committed_sessions, served.account_id)

    refused = await api.execute(REFUND, {"paymentId": encode_id("Payment", alipay.id), "amount": "5.00",
                                         "reason": "错缴"}, token=token)

    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"], refused
    assert before == (2000, 2000)
    assert await money(committed_sessions, served.account_id) == before
    assert await refunds_of(committed_sessions, served.account_id) == []
    assert fakes.orders(ALIPAY)[order.out_trade_no]["refunded_fen"] == 0
