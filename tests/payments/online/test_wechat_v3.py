"""WeChat Pay API v3 (``WechatV3Gateway`` with wechatpayv3) against the local WeChat Pay over
real HTTP: every scene, signed notifications decrypted and verified by a receiver, forged
and tampered ones, query / close / cancel / refund / statement, slow barcode payments,
and web authorization for the openid."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from datetime import datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from backend.gateways.errors import GatewayBadAnswer, GatewayRejected
from backend.payments.online.fakes.wechat import jsapi_url
from backend.payments.online.gateway import (
    GatewayRefundState,
    NotificationRejected,
    PayloadKind,
    StatementKind,
    TradeState,
    VerifiedNotification,
)
from backend.payments.online.models import OrderScene
from backend.payments.online.testkeys import FAKE_WECHAT_PLATFORM_KEY
from backend.payments.online.wechat import CHINA, authorize_url, openid_for_code
from backend.payments.online.wechat_v3 import WechatV3Gateway
from tests.payments.online import wechat_fixtures
from tests.payments.online.wechat_fixtures import AUTH_CODE, NotifyReceiver, WechatFake, order_request

wechat_fake = wechat_fixtures.wechat_fake
notify_receiver = wechat_fixtures.notify_receiver

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


def wait_for(check: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not true in time"
        time.sleep(0.02)


def verified(receiver: NotifyReceiver, out_trade_no: str) -> list[VerifiedNotification]:
    return [seen for seen in receiver.about(out_trade_no) if isinstance(seen, VerifiedNotification)]


def rejected(receiver: NotifyReceiver, out_trade_no: str | None = None) -> list[NotificationRejected]:
    return [seen for seen in receiver.received if isinstance(seen, NotificationRejected)
            and (out_trade_no is None or seen.out_trade_no == out_trade_no)]


@pytest.mark.parametrize(("scene", "kind"), [(OrderScene.app, PayloadKind.app_params), (OrderScene.h5, PayloadKind.pay_url),
                                             (OrderScene.jsapi, PayloadKind.jsapi),
                                             (OrderScene.native, PayloadKind.code_url)])
def test_each_scene_pays_and_its_notification_verifies(wechat_fake: WechatFake, notify_receiver: NotifyReceiver,
                                                       scene: OrderScene, kind: PayloadKind) -> None:
    gateway = wechat_fake.gateway("demo")
    order = order_request(scene, notify_receiver.v3_url, amount_fen=4321, openid=OPENID if scene is OrderScene.jsapi else None)

    payload = gateway.create(order)
    assert gateway.query(order.out_trade_no).state is TradeState.waiting
    paid = wechat_fake.pay(order.out_trade_no)

    assert payload.kind is kind
    assert paid["state"] == "SUCCESS" and paid["sent"] == [{"status": 200, "body": "{}"}]
    [notification] = verified(notify_receiver, order.out_trade_no)
    assert notification.amount_fen == 4321 and notification.paid and notification.status == "SUCCESS"
    assert notification.trade_no and notification.paid_at is not None
    status = gateway.query(order.out_trade_no)
    assert status.state is TradeState.paid and status.amount_fen == 4321 and status.trade_no == notification.trade_no
    if scene is OrderScene.jsapi:
        assert notification.payer == OPENID


def test_app_and_jsapi_parameters_are_signed_with_the_merchant_key(wechat_fake: WechatFake,
                                                                   notify_receiver: NotifyReceiver) -> None:
    gateway = wechat_fake.gateway("demo")
    merchant = wechat_fake.merchant("demo")
    assert merchant.private_key is not None
    key = serialization.load_pem_private_key(merchant.private_key.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)

    app = gateway.create(order_request(OrderScene.app, notify_receiver.v3_url)).value
    jsapi = gateway.create(order_request(OrderScene.jsapi, notify_receiver.v3_url, openid=OPENID)).value

    assert isinstance(app, dict) and isinstance(jsapi, dict)
    signed_app = "\n".join((app["appid"], app["timestamp"], app["noncestr"], app["prepayid"])) + "\n"
    key.public_key().verify(base64.b64decode(app["sign"]), signed_app.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert jsapi["package"].startswith("prepay_id=") and jsapi["signType"] == "RSA"
    signed_jsapi = "\n".join((jsapi["appId"], jsapi["timeStamp"], jsapi["nonceStr"], jsapi["package"])) + "\n"
    key.public_key().verify(base64.b64decode(jsapi["paySign"]), signed_jsapi.encode(), padding.PKCS1v15(),
                            hashes.SHA256())


def test_the_jsapi_bridge_and_the_cashier_page_pay_like_a_payer(wechat_fake: WechatFake,
                                                                 notify_receiver: NotifyReceiver) -> None:
    gateway = wechat_fake.gateway("demo")
    order = order_request(OrderScene.jsapi, notify_receiver.v3_url, openid=OPENID, amount_fen=800)
    params = gateway.create(order).value
    assert isinstance(params, dict)

    forged = httpx.get(jsapi_url(wechat_fake.url, {**params, "paySign": "AAAA"}))
    page = httpx.get(jsapi_url(wechat_fake.url, params, redirect_url="http://127.0.0.1:9/pay/result"))
    action = page.text.split('action="', 1)[1].split('"', 1)[0]
    paid = httpx.post(wechat_fake.url + action, data={"redirect_url": "http://127.0.0.1:9/pay/result"})

    assert forged.status_code == 400 and "支付验证签名失败" in forged.text
    assert page.status_code == 200 and "¥8.00" in page.text and "付款" in page.text and "取消" in page.text
    assert paid.status_code == 303 and paid.headers["location"] == "http://127.0.0.1:9/pay/result"
    assert [n.amount_fen for n in verified(notify_receiver, order.out_trade_no)] == [800]


def test_h5_cashier_cancel_leaves_the_order_unpaid(wechat_fake: WechatFake, notify_receiver: NotifyReceiver) -> None:
    gateway = wechat_fake.gateway("demo")
    order = order_request(OrderScene.h5, notify_receiver.v3_url, return_url="http://127.0.0.1:9/back?x=1")
    url = gateway.create(order).value
    assert isinstance(url, str)

    page = httpx.get(url)
    cancelled = httpx.post(url.split("?", 1)[0] + "/cancel", data={})

    assert parse_qs(urlsplit(url).query)["redirect_url"] == ["http://127.0.0.1:9/back?x=1"]
    assert "¥12.34" in page.text and 'value="http://127.0.0.1:9/back?x=1"' in page.text
    assert cancelled.status_code == 200 and "已取消支付" in cancelled.text
    assert gateway.query(order.out_trade_no).state is TradeState.waiting
    assert notify_receiver.about(order.out_trade_no) == []


def test_forged_and_tampered_notifications(wechat_fake: WechatFake, notify_receiver: NotifyReceiver) -> None:
    gateway = wechat_fake.gateway("demo")
    forged_order = order_request(OrderScene.native, notify_receiver.v3_url, amount_fen=500)
    tampered_order = order_request(OrderScene.native, notify_receiver.v3_url, amount_fen=500)
    gateway.create(forged_order)
    gateway.create(tampered_order)
    before = len(rejected(notify_receiver))

    forged = wechat_fake.pay(forged_order.out_trade_no, mode="forge_signature")
    tampered = wechat_fake.pay(tampered_order.out_trade_no, mode="tamper_amount")

    assert forged["sent"][0]["status"] == 500 and json.loads(forged["sent"][0]["body"])["code"] == "FAIL"
    assert [r.reason for r in rejected(notify_receiver)[before:]] == ["bad signature"]
    assert gateway.query(forged_order.out_trade_no).state is TradeState.waiting  # an attacker paid nothing
    # Correctly signed, one fen more than the order: verification passes, the amount check is the caller's.
    assert tampered["sent"][0]["status"] == 200
    assert [n.amount_fen for n in verified(notify_receiver, tampered_order.out_trade_no)] == [501]


def test_a_notification_is_refused_for_another_app_a_body_not_json_and_a_wrong_key(wechat_fake: WechatFake) -> None:
    merchant = wechat_fake.merchant("demo")
    platform_key = serialization.load_pem_private_key(
        (wechat_fake.settings.merchants_file.parent / FAKE_WECHAT_PLATFORM_KEY).read_bytes(),  # type: ignore[union-attr]
        password=None)
    assert isinstance(platform_key, rsa.RSAPrivateKey)

    def signed(body: str) -> dict[str, str]:
        timestamp, nonce = str(int(time.time())), "n0nce"
        signature = platform_key.sign(f"{timestamp}\n{nonce}\n{body}\n".encode(), padding.PKCS1v15(), hashes.SHA256())
        return {"Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce, "Wechatpay-Serial":
                merchant.platform_public_key_id or "", "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
                "Wechatpay-Signature": base64.b64encode(signature).decode()}

    genuine = WechatV3Gateway(merchant, wechat_fake.settings)
    other_app = WechatV3Gateway(dataclasses.replace(merchant, app_id="wx00000000000000ff"), wechat_fake.settings)
    other_key = WechatV3Gateway(dataclasses.replace(merchant, api_v3_key="k" * 32), wechat_fake.settings)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert merchant.api_v3_key is not None
    transaction = {"appid": merchant.app_id, "mchid": merchant.mch_id, "out_trade_no": "SW202612070000000001",
                   "transaction_id": "4200", "trade_state": "SUCCESS", "success_time": "2026-12-07T10:00:00+08:00",
                   "amount": {"total": 100}}
    cipher = AESGCM(merchant.api_v3_key.encode()).encrypt(b"123456789012", json.dumps(transaction).encode(), b"transaction")
    body = json.dumps({"resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "resource": {
        "algorithm": "AEAD_AES_256_GCM", "ciphertext": base64.b64encode(cipher).decode(), "nonce": "123456789012",
        "associated_data": "transaction"}})

    assert genuine.verify_notification(signed(body), body.encode()).amount_fen == 100
    with pytest.raises(NotificationRejected, match="app id wx0000000000000001 is not this merchant's"):
        other_app.verify_notification(signed(body), body.encode())
    with pytest.raises(NotificationRejected, match="does not decrypt"):
        other_key.verify_notification(signed(body), body.encode())
    with pytest.raises(NotificationRejected, match="not a JSON body"):
        genuine.verify_notification(signed("amount=1"), b"amount=1")
    with pytest.raises(NotificationRejected, match="no Wechatpay-Signature"):
        genuine.verify_notification({}, body.encode())
    assert genuine.answer(False).status == 500 and genuine.answer(True).status == 200


def test_a_replay_of_ten_at_once_and_unanswered_notifications_are_retried(wechat_fake: WechatFake,
                                                                          notify_receiver: NotifyReceiver) -> None:
    gateway = wechat_fake.gateway("demo")
    replayed = order_request(OrderScene.native, notify_receiver.v3_url)
    retried = order_request(OrderScene.native, notify_receiver.v3_url)
    gateway.create(replayed)
    gateway.create(retried)

    answer = wechat_fake.pay(replayed.out_trade_no, mode="replay", times=10)
    notify_receiver.refuse_next = 2
    first = wechat_fake.pay(retried.out_trade_no)

    assert [sent["status"] for sent in answer["sent"]] == [200] * 10
    assert len(verified(notify_receiver, replayed.out_trade_no)) == 10
    assert first["sent"][0]["status"] == 500
    wait_for(lambda: any(s["status"] == 200 for s in wechat_fake.notifications(retried.out_trade_no)))
    assert [s["attempt"] for s in wechat_fake.notifications(retried.out_trade_no)] == [1, 2, 3]


def test_retries_can_be_turned_off_and_notifications_dropped_or_delayed(wechat_fake: WechatFake,
                                                                        notify_receiver: NotifyReceiver) -> None:
    gateway = wechat_fake.gateway("demo")
    unanswered, dropped, delayed = (order_request(OrderScene.native, notify_receiver.v3_url) for _ in range(3))
    for order in (unanswered, dropped, delayed):
        gateway.create(order)

    wechat_fake.retries(enabled=False)
    try:
        notify_receiver.refuse_next = 1
        wechat_fake.pay(unanswered.out_trade_no)
        wechat_fake.script("drop_notify", path="/_control/pay")
        drop = wechat_fake.pay(dropped.out_trade_no)
        wechat_fake.script("delay_notify", path="/_control/pay", seconds=0.3)
        delay = wechat_fake.pay(delayed.out_trade_no)
        time.sleep(0.1)
        assert verified(notify_receiver, delayed.out_trade_no) == []
        wait_for(lambda: verified(notify_receiver, delayed.out_trade_no))
    finally:
        wechat_fake.retries(enabled=True)

    assert len(wechat_fake.notifications(unanswered.out_trade_no)) == 1
    assert drop["sent"] == [] and drop["state"] == "SUCCESS" and notify_receiver.about(dropped.out_trade_no) == []
    assert gateway.query(dropped.out_trade_no).state is TradeState.paid  # the active query finds what the notify lost
    assert delay["delayed"] == "delayed 0.3 s"


def test_close_cancel_refund_and_the_statement(wechat_fake: WechatFake, notify_receiver: NotifyReceiver) -> None:
    gateway = wechat_fake.gateway("demo")
    unpaid, paid = (order_request(OrderScene.native, notify_receiver.v3_url, amount_fen=1000) for _ in range(2))
    gateway.create(unpaid)
    gateway.create(paid)
    wechat_fake.pay(paid.out_trade_no)

    gateway.close(unpaid.out_trade_no)
    gateway.close(unpaid.out_trade_no)  # closing twice is fine
    gateway.close("SW202612079999999999")  # and one never opened
    with pytest.raises(GatewayRejected) as refused:
        gateway.close(paid.out_trade_no)
    assert "ORDERPAID" in (refused.value.detail or "")
    asked = gateway.refund(paid.out_trade_no, out_refund_no="RF" + paid.out_trade_no[2:], amount_fen=300,
                           total_fen=1000, reason="错缴")
    again = gateway.refund(paid.out_trade_no, out_refund_no="RF" + paid.out_trade_no[2:], amount_fen=300,
                           total_fen=1000, reason="错缴")
    done = gateway.query_refund(paid.out_trade_no, out_refund_no="RF" + paid.out_trade_no[2:])
    with pytest.raises(GatewayRejected) as refused:
        gateway.refund(paid.out_trade_no, out_refund_no="RF" + paid.out_trade_no[2:12] + "X", amount_fen=701,
                       total_fen=1000, reason="错缴")
    assert "超过" in (refused.value.detail or "")
    missing = gateway.query_refund(paid.out_trade_no, out_refund_no="RF00000000")
    lines = gateway.statement(datetime.now(CHINA).date())

    assert gateway.query(unpaid.out_trade_no).state is TradeState.closed
    assert asked.state is GatewayRefundState.processing and asked.amount_fen == 300 and asked.refund_id
    assert again.refund_id == asked.refund_id  # the same out_refund_no is the same refund
    assert done.state is GatewayRefundState.succeeded and done.amount_fen == 300
    assert missing.state is GatewayRefundState.failed
    assert gateway.query(paid.out_trade_no).state is TradeState.paid  # REFUND: paid, then partly refunded
    mine = [line for line in lines if line.out_trade_no == paid.out_trade_no]
    assert [(line.kind, line.amount_fen, line.out_refund_no) for line in mine] == [
        (StatementKind.payment, 1000, None), (StatementKind.refund, 300, "RF" + paid.out_trade_no[2:])]
    assert gateway.statement(datetime(2020, 1, 1).date()) == []


def test_barcode_payments_paid_slow_declined_and_cancelled(wechat_fake: WechatFake) -> None:
    gateway = wechat_fake.gateway("demo")
    quick, slow, declined, abandoned = (order_request(OrderScene.barcode, "", auth_code=AUTH_CODE) for _ in range(4))

    assert gateway.barcode_pay(quick).state is TradeState.paid
    wechat_fake.barcode(queries=2)
    assert gateway.barcode_pay(slow).state is TradeState.paying
    assert [gateway.query(slow.out_trade_no).state for _ in range(3)] == [TradeState.paying, TradeState.paying,
                                                                          TradeState.paid]
    wechat_fake.barcode(queries=0, outcome="declined")
    assert gateway.barcode_pay(declined).state is TradeState.failed
    wechat_fake.barcode(queries=1, outcome="abandoned")
    assert gateway.barcode_pay(abandoned).state is TradeState.paying
    gateway.cancel(abandoned.out_trade_no)
    assert gateway.query(abandoned.out_trade_no).state is TradeState.closed
    bad_code = dataclasses.replace(order_request(OrderScene.barcode, ""), auth_code="280000000000000000")
    assert gateway.barcode_pay(bad_code).state is TradeState.failed


def test_a_badly_signed_answer_is_a_bad_answer(wechat_fake: WechatFake, notify_receiver: NotifyReceiver) -> None:
    gateway = wechat_fake.gateway("demo")
    order = order_request(OrderScene.native, notify_receiver.v3_url)
    gateway.create(order)

    wechat_fake.script("bad_signature")
    with pytest.raises(GatewayBadAnswer):
        gateway.query(order.out_trade_no)
    wechat_fake.script("refuse")
    with pytest.raises(GatewayRejected) as refused:
        gateway.query(order.out_trade_no)
    assert "NO_AUTH" in (refused.value.detail or "")


def test_web_authorization_gives_a_stable_openid_per_app(wechat_fake: WechatFake) -> None:
    demo, legacy = wechat_fake.merchant("demo"), wechat_fake.merchant("legacy")

    def code_for(merchant_name: str) -> str:
        url = authorize_url(wechat_fake.settings, wechat_fake.merchant(merchant_name),
                            redirect_uri="http://127.0.0.1:9/pay/wechat/authorized?account=1001", state="s1")
        redirect = httpx.get(url.split("#", 1)[0])
        assert redirect.status_code == 302
        back = urlsplit(redirect.headers["location"])
        query = parse_qs(back.query)
        assert back.path == "/pay/wechat/authorized" and query["state"] == ["s1"] and query["account"] == ["1001"]
        return query["code"][0]

    first_code = code_for("demo")
    first = openid_for_code(wechat_fake.settings, demo, first_code)
    second = openid_for_code(wechat_fake.settings, demo, code_for("demo"))
    other_app = openid_for_code(wechat_fake.settings, legacy, code_for("legacy"))

    assert first == second and first.startswith("o") and len(first) == 28
    assert other_app != first
    with pytest.raises(GatewayRejected) as refused:
        openid_for_code(wechat_fake.settings, demo, first_code)
    assert "40163" in (refused.value.detail or "")
    with pytest.raises(GatewayRejected) as refused:
        openid_for_code(wechat_fake.settings, legacy, code_for("demo"))
    assert "40029" in (refused.value.detail or "")
