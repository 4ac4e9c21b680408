"""The Alipay gateway against the local Alipay, both over real HTTP: every scene opens and
is paid (cashier page or control API), the notification reaches a receiver and
verifies; forged, tampered and foreign ones are refused with their reason; query, close,
cancel, barcode (slow payer), refunds and the statement round-trip; answers that fail
their signature or are refused become the gateways' typed failures."""

from __future__ import annotations

import base64
import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from backend.domain import Gateway
from backend.gateways.client import GatewayClient
from backend.gateways.errors import GatewayBadAnswer, GatewayRejected, GatewayTimeout, GatewayUnavailable
from backend.payments.online.alipay import CHINA, AlipayGateway, AlipaySettings, fen_to_yuan, yuan_to_fen
from backend.payments.online.fakes.alipay import unsigned_string
from backend.payments.online.gateway import (
    GatewayRefundState,
    NotificationRejected,
    OrderRequest,
    PayloadKind,
    StatementKind,
    TradeState,
)
from backend.payments.online.merchants import AlipayMerchant
from backend.payments.online.models import OrderScene
from backend.payments.online.testkeys import ALIPAY_APP_ID
from tests.payments.online.conftest import AlipayFake, MerchantsFile, NotifyReceiver

_numbers = itertools.count(1)
FORM = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}
ALIPAY_CODE = "284000000000000001"  # an Alipay payment code (25–30, 16–24 digits)


def an_order(receiver: NotifyReceiver, scene: OrderScene, amount_fen: int = 1234, **extra: object) -> OrderRequest:
    number = next(_numbers) + int(time.time()) % 100000 * 1000
    return OrderRequest(out_trade_no=f"SW{datetime.now(CHINA):%Y%m%d}{number:010d}", amount_fen=amount_fen,
                        subject="水费充值 1-2-301", scene=scene, notify_url=receiver.url,
                        expires_at=datetime.now(UTC) + timedelta(minutes=30), **extra)  # type: ignore[arg-type]


@pytest.fixture
def receiver(notify_receiver: NotifyReceiver) -> NotifyReceiver:
    notify_receiver.received.clear()
    notify_receiver.reply = b"success"
    return notify_receiver


# ------------------------------------------------------------------ amounts


def test_yuan_and_fen_convert_exactly_and_refuse_what_is_not_an_amount() -> None:
    assert [yuan_to_fen(text) for text in ("0.01", "12.3", "12.34", "100", "0")] == [1, 1230, 1234, 10000, 0]
    for bad in ("12.345", "1e1", "-1.00", "+1", " 1", "01.00", "1.", ".5", "1,00", "", "NaN"):
        with pytest.raises(ValueError, match="not an amount in yuan"):
            yuan_to_fen(bad)
    assert [fen_to_yuan(fen) for fen in (1, 10, 1234, 100000)] == ["0.01", "0.10", "12.34", "1000.00"]
    with pytest.raises(ValueError, match="not an amount in fen"):
        fen_to_yuan(-1)


# ------------------------------------------------------------------ every scene, paid, notified


def test_a_qr_order_paid_at_the_cashier_sends_a_notification_that_verifies(alipay_fake: AlipayFake,
                                                                           receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.qr)

    payload = gateway.create(order)
    assert payload.kind is PayloadKind.code_url
    cashier = httpx.get(str(payload.value))
    assert cashier.status_code == 200 and "¥12.34" in cashier.text and "付款" in cashier.text and "取消" in cashier.text
    assert gateway.query(order.out_trade_no).state is TradeState.waiting
    paid_page = httpx.post(f"{alipay_fake.url}/cashier/pay", data={"out_trade_no": order.out_trade_no})

    assert "支付成功" in paid_page.text
    headers, body = receiver.wait_for(1)[0]
    notification = gateway.verify_notification(headers, body)
    assert (notification.out_trade_no, notification.amount_fen, notification.paid, notification.status) == \
        (order.out_trade_no, 1234, True, "TRADE_SUCCESS")
    assert notification.paid_at is not None and notification.payer and notification.payer.startswith("2088")
    status = gateway.query(order.out_trade_no)
    assert (status.state, status.amount_fen, status.trade_no) == (TradeState.paid, 1234, notification.trade_no)
    assert gateway.answer(True).body == b"success" and gateway.answer(False).body == b"failure"


@pytest.mark.parametrize("scene", [OrderScene.wap, OrderScene.page])
def test_wap_and_page_pay_urls_open_the_cashier_and_the_control_api_pays(alipay_fake: AlipayFake,
                                                                         receiver: NotifyReceiver,
                                                                         scene: OrderScene) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, scene, 500, return_url="http://127.0.0.1:9/pay/result")

    payload = gateway.create(order)
    assert payload.kind is PayloadKind.pay_url and str(payload.value).startswith(f"{alipay_fake.url}/gateway.do?")
    # Alipay knows a page order only once the payer's browser opens it.
    assert gateway.query(order.out_trade_no).state is TradeState.not_found
    assert "¥5.00" in httpx.get(str(payload.value)).text
    answer = alipay_fake.pay(order.out_trade_no)

    assert answer["sent"] == [{"status": 200, "body": "success"}]
    assert alipay_fake.orders()[order.out_trade_no]["scene"] == scene.value
    notification = gateway.verify_notification(*receiver.wait_for(1)[0])
    assert (notification.amount_fen, notification.paid) == (500, True)


def test_the_app_order_string_opened_at_the_gateway_is_paid_and_notified(alipay_fake: AlipayFake,
                                                                         receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.app, 1)

    payload = gateway.create(order)
    assert payload.kind is PayloadKind.order_string
    signed = dict(parse_qsl(str(payload.value)))
    assert signed["method"] == "alipay.trade.app.pay" and signed["app_id"] == ALIPAY_APP_ID and signed["sign"]
    # What the app SDK hands to Alipay: the fake takes it at its gateway.
    assert "¥0.01" in httpx.get(f"{alipay_fake.settings.gateway_url}?{payload.value}").text
    alipay_fake.pay(order.out_trade_no)

    assert gateway.verify_notification(*receiver.wait_for(1)[0]).amount_fen == 1


def test_a_payer_who_cancels_at_the_cashier_leaves_the_order_unpaid_and_it_closes(alipay_fake: AlipayFake,
                                                                                  receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.qr)
    gateway.create(order)

    cancelled = httpx.post(f"{alipay_fake.url}/cashier/cancel", data={"out_trade_no": order.out_trade_no})

    assert "已取消" in cancelled.text and receiver.received == []
    assert gateway.query(order.out_trade_no).state is TradeState.waiting
    gateway.close(order.out_trade_no)
    gateway.close(order.out_trade_no)  # closing a closed order is fine
    gateway.close("SW202612070009999999")  # and one never opened
    assert gateway.query(order.out_trade_no).state is TradeState.closed
    assert httpx.post(f"{alipay_fake.url}/cashier/pay", data={"out_trade_no": order.out_trade_no}).status_code == 409
    # The control API pays it all the same (the payer's money taken as it closed): a late notification.
    assert alipay_fake.pay(order.out_trade_no)["sent"] == [{"status": 200, "body": "success"}]
    assert alipay_fake.orders()[order.out_trade_no]["state"] == "paid"
    assert gateway.verify_notification(*receiver.wait_for(1)[0]).paid


def test_closing_a_paid_order_is_refused(alipay_fake: AlipayFake, receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.qr)
    gateway.create(order)
    alipay_fake.pay(order.out_trade_no)

    with pytest.raises(GatewayRejected) as refused:
        gateway.close(order.out_trade_no)
    assert "ACQ.TRADE_STATUS_ERROR" in str(refused.value.detail)


# ------------------------------------------------------------------ notifications refused


@pytest.mark.parametrize(("mode", "reason"), [
    ("forge_signature", "bad signature"),
    ("tamper_amount", "bad signature"),
    ("other_app", "app id 2021000000009999 is not this merchant's"),
])
def test_forged_tampered_and_foreign_notifications_are_rejected_with_their_reason(
        alipay_fake: AlipayFake, receiver: NotifyReceiver, mode: str, reason: str) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.qr)
    gateway.create(order)

    alipay_fake.pay(order.out_trade_no, mode)

    with pytest.raises(NotificationRejected) as rejected:
        gateway.verify_notification(*receiver.wait_for(1)[0])
    assert rejected.value.reason == reason and rejected.value.out_trade_no == order.out_trade_no
    # A forger's notification is not Alipay paying: the order is as it was.
    assert gateway.query(order.out_trade_no).state is TradeState.waiting


def test_a_genuine_notification_with_another_amount_verifies_and_says_that_amount(
        alipay_fake: AlipayFake, receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.qr, 1000)
    gateway.create(order)

    alipay_fake.pay(order.out_trade_no, "wrong_amount")

    assert gateway.verify_notification(*receiver.wait_for(1)[0]).amount_fen == 999  # the caller compares


@pytest.mark.parametrize(("headers", "body", "reason"), [
    ({"content-type": "application/json"}, b'{"out_trade_no": "SW1"}', "not a form body (application/json)"),
    ({}, b'{"out_trade_no": "SW1"}', "not a form body"),
    ({}, b"<xml><return_code>SUCCESS</return_code></xml>", "not a form body"),
    (FORM, b"\xff\xfe", "not a form body"),
    (FORM, b"a=1&a=2", "field a twice"),
    (FORM, b"out_trade_no=SW1&total_amount=1.00", "no signature"),
    (FORM, b"out_trade_no=SW1&sign=abc&sign_type=RSA", "sign_type 'RSA' is not RSA2"),
    (FORM, b"out_trade_no=SW1&sign=%%%&sign_type=RSA2", "bad signature"),
])
def test_a_body_that_is_not_a_signed_form_is_rejected(alipay_fake: AlipayFake, headers: dict[str, str], body: bytes,
                                                      reason: str) -> None:
    with pytest.raises(NotificationRejected) as rejected:
        alipay_fake.gateway().verify_notification(headers, body)
    assert rejected.value.reason == reason


def test_a_genuine_notification_with_more_than_two_decimals_is_rejected(alipay_fake: AlipayFake,
                                                                        receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.qr)
    gateway.create(order)
    alipay_fake.pay(order.out_trade_no)
    fields = dict(parse_qsl(receiver.wait_for(1)[0][1].decode()))
    # Re-signed with "Alipay's" test key for 12.345: the signature holds, the amount does not.
    key = serialization.load_pem_private_key(
        (alipay_fake_key_dir(alipay_fake) / "fake_alipay_private.pem").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    fields["total_amount"] = "12.345"
    fields["sign"] = base64.b64encode(key.sign(unsigned_string(fields, skip=frozenset({"sign", "sign_type"})).encode(),
                                               padding.PKCS1v15(), hashes.SHA256())).decode()

    with pytest.raises(NotificationRejected) as rejected:
        gateway.verify_notification(FORM, urlencode(fields).encode())
    assert rejected.value.reason.startswith("bad value: not an amount in yuan: '12.345'")


def alipay_fake_key_dir(fake: AlipayFake) -> Path:
    assert fake.settings.fake_merchants_file
    return Path(fake.settings.fake_merchants_file).parent


# ------------------------------------------------------------------ replay, retries, drop and delay


def test_replay_sends_the_same_genuine_notification_many_times_at_once(alipay_fake: AlipayFake,
                                                                       receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.qr)
    gateway.create(order)

    answer = alipay_fake.pay(order.out_trade_no, "replay", times=10)

    assert answer["sent"] == [{"status": 200, "body": "success"}] * 10
    bodies = {body for _, body in receiver.wait_for(10)}
    assert len(bodies) == 1 and gateway.verify_notification(FORM, bodies.pop()).paid


def test_a_notification_not_answered_success_is_retried_until_it_is(alipay_fake: AlipayFake,
                                                                    receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.qr)
    gateway.create(order)
    receiver.reply = b"failure"
    alipay_fake.retry_scale(0.0004)  # 4 minutes → 96 ms, 10 minutes → 240 ms

    first = alipay_fake.pay(order.out_trade_no)
    receiver.wait_for(2, timeout_s=5)  # the first retry: 4 minutes, compressed
    receiver.reply = b"success"
    receiver.wait_for(3, timeout_s=5)
    time.sleep(0.3)  # the retry after 10 more "minutes" would have come by now

    assert first["sent"] == [{"status": 200, "body": "failure"}]
    assert len(receiver.received) == 3 and len({body for _, body in receiver.received}) == 1
    assert [d["body"] for d in alipay_fake.orders()[order.out_trade_no]["notifications"]] == \
        ["failure", "failure", "success"]


def test_retries_can_be_turned_off_and_a_dropped_notification_comes_on_the_retry(alipay_fake: AlipayFake,
                                                                                  receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    unretried, dropped = an_order(receiver, OrderScene.qr), an_order(receiver, OrderScene.qr)
    gateway.create(unretried)
    gateway.create(dropped)
    receiver.reply = b"failure"

    alipay_fake.retry_scale(0.0004)  # 4 minutes → 96 ms

    alipay_fake.pay(unretried.out_trade_no, retry=False)
    time.sleep(0.15)  # its first retry would have come by now
    assert len(receiver.received) == 1
    receiver.reply = b"success"
    alipay_fake.script("drop_notify")
    assert alipay_fake.pay(dropped.out_trade_no)["sent"] == []
    _, body = receiver.wait_for(2)[1]  # the retry, 4 "minutes" later
    assert gateway.verify_notification(FORM, body).out_trade_no == dropped.out_trade_no


# ------------------------------------------------------------------ barcode


def test_a_barcode_payer_who_confirms_slowly_is_paying_then_paid_and_notified(alipay_fake: AlipayFake,
                                                                              receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.barcode, 2000, auth_code=ALIPAY_CODE)
    alipay_fake.script("user_paying", body=2)

    assert gateway.barcode_pay(order).state is TradeState.paying
    assert gateway.query(order.out_trade_no).state is TradeState.waiting  # still confirming
    status = gateway.query(order.out_trade_no)

    assert (status.state, status.amount_fen) == (TradeState.paid, 2000)
    assert gateway.verify_notification(*receiver.wait_for(1)[0]).amount_fen == 2000


def test_barcode_paid_at_once_declined_and_cancelled(alipay_fake: AlipayFake, receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    at_once = an_order(receiver, OrderScene.barcode, auth_code=ALIPAY_CODE)
    declined = an_order(receiver, OrderScene.barcode, auth_code="134000000000000001")  # a WeChat code
    abandoned = an_order(receiver, OrderScene.barcode, auth_code=ALIPAY_CODE)

    paid = gateway.barcode_pay(at_once)
    refused = gateway.barcode_pay(declined)
    alipay_fake.script("user_paying", body=1000)
    assert gateway.barcode_pay(abandoned).state is TradeState.paying
    gateway.cancel(abandoned.out_trade_no)

    assert (paid.state, paid.amount_fen) == (TradeState.paid, 1234) and paid.paid_at is not None
    assert (refused.state, refused.detail) == (TradeState.failed, "ACQ.PAYMENT_AUTH_CODE_INVALID")
    assert gateway.query(abandoned.out_trade_no).state is TradeState.closed
    assert gateway.barcode_pay(at_once).state is TradeState.paid  # asked again: paid already


# ------------------------------------------------------------------ refunds and the statement


def test_refunds_round_trip_and_the_statement_lists_payments_and_refunds(alipay_fake: AlipayFake,
                                                                        receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.barcode, 3000, auth_code=ALIPAY_CODE)
    gateway.barcode_pay(order)
    refund_no = f"RF{order.out_trade_no[2:]}"

    refunded = gateway.refund(order.out_trade_no, out_refund_no=refund_no, amount_fen=1000, total_fen=3000,
                              reason="销户退款")
    again = gateway.refund(order.out_trade_no, out_refund_no=refund_no, amount_fen=1000, total_fen=3000,
                           reason="销户退款")
    with pytest.raises(GatewayRejected) as above:
        gateway.refund(order.out_trade_no, out_refund_no=refund_no + "X", amount_fen=2001, total_fen=3000, reason="x")

    assert (refunded.state, refunded.amount_fen) == (GatewayRefundState.succeeded, 1000)
    assert again.state is GatewayRefundState.succeeded  # the same refund number moves nothing twice
    assert above.value.detail == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    asked = gateway.query_refund(order.out_trade_no, out_refund_no=refund_no)
    assert (asked.state, asked.amount_fen) == (GatewayRefundState.succeeded, 1000)
    assert gateway.query_refund(order.out_trade_no, out_refund_no="RF-none").state is GatewayRefundState.failed
    assert alipay_fake.orders()[order.out_trade_no]["refunded_fen"] == 1000

    lines = gateway.statement(datetime.now(CHINA).date())
    mine = {(line.kind, line.amount_fen, line.out_refund_no) for line in lines if line.out_trade_no == order.out_trade_no}
    assert mine == {(StatementKind.payment, 3000, None), (StatementKind.refund, 1000, refund_no)}
    assert gateway.statement(datetime.now(CHINA).date() - timedelta(days=3)) == []


# ------------------------------------------------------------------ answers that cannot be believed


def test_answers_signed_wrong_unsigned_or_refused_are_typed_failures(alipay_fake: AlipayFake,
                                                                     receiver: NotifyReceiver) -> None:
    gateway = alipay_fake.gateway()

    alipay_fake.script("bad_signature", path="/gateway.do")
    with pytest.raises(GatewayBadAnswer, match="signature"):
        gateway.query("SW202612070000000001")
    alipay_fake.script("unsigned", path="/gateway.do")
    with pytest.raises(GatewayBadAnswer):
        gateway.query("SW202612070000000001")
    alipay_fake.script("refuse", body="ACQ.TOTAL_FEE_EXCEED", path="/gateway.do")
    with pytest.raises(GatewayRejected) as refused:
        gateway.create(an_order(receiver, OrderScene.qr))
    assert refused.value.detail == "ACQ.TOTAL_FEE_EXCEED" and "sub_msg" in str(refused.value.answer)
    alipay_fake.script("error", status=502, path="/gateway.do")
    with pytest.raises(GatewayUnavailable):
        gateway.query("SW202612070000000001")
    assert gateway.query("SW202612070000000001").state is TradeState.not_found


def test_a_request_signed_with_another_key_is_refused_by_the_gateway(alipay_fake: AlipayFake,
                                                                     test_merchants: MerchantsFile,
                                                                     receiver: NotifyReceiver) -> None:
    other_key = (alipay_fake_key_dir(alipay_fake) / "wechat_apiclient_key.pem").read_text()
    impostor = AlipayGateway(AlipayMerchant(name="demo", app_id=ALIPAY_APP_ID, private_key=other_key,
                                            alipay_public_key=alipay_fake.merchant.alipay_public_key),
                             alipay_fake.settings)

    with pytest.raises(GatewayRejected) as refused:
        impostor.query("SW202612070000000001")
    assert refused.value.detail == "isv.invalid-signature"


def test_an_unreachable_gateway_is_unavailable_and_nothing_was_sent(alipay_fake: AlipayFake, unused_port: int) -> None:
    gateway = alipay_fake.gateway(url=f"http://127.0.0.1:{unused_port}")

    with pytest.raises(GatewayUnavailable) as unavailable:
        gateway.query("SW202612070000000001")
    assert unavailable.value.maybe_done is False


def test_a_gateway_that_answers_too_late_is_a_timeout_that_may_have_acted(alipay_fake: AlipayFake) -> None:
    gateway = alipay_fake.gateway(timeout_s=0.3)
    alipay_fake.script("delay", seconds=1, path="/gateway.do")

    with pytest.raises(GatewayTimeout) as late:
        gateway.query("SW202612070000000001")
    assert late.value.maybe_done is True


async def test_through_the_gateway_client_the_calls_run_on_its_threads_and_fail_typed(alipay_fake: AlipayFake,
                                                                                       receiver: NotifyReceiver) -> None:
    # The declaration the payments domain makes, without kept exchanges (no database here).
    declaration = Gateway("alipay", "支付宝", AlipaySettings, fake="backend.payments.online.fakes.alipay:fake_app")
    client = GatewayClient(declaration, alipay_fake.settings)
    gateway = alipay_fake.gateway()
    order = an_order(receiver, OrderScene.qr)
    try:
        payload = await client.call("create", gateway.create, order, reference=order.out_trade_no)
        alipay_fake.script("refuse", body="ACQ.TRADE_HAS_CLOSE")
        with pytest.raises(GatewayRejected) as refused:
            await client.call("close", gateway.close, order.out_trade_no, reference=order.out_trade_no)
    finally:
        client.close()

    assert payload.kind is PayloadKind.code_url
    assert refused.value.detail == "ACQ.TRADE_HAS_CLOSE" and not refused.value.retryable
