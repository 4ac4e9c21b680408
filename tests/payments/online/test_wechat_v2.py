"""WeChat Pay API v2 (``WechatV2Gateway`` with wechatpy) against the local WeChat Pay over
real HTTP, for an MD5 merchant (``legacy``) and an HMAC-SHA256 one (``hmac``): every
scene, XML notifications verified by a receiver, forged and tampered ones, query / close /
reverse / refund / statement, and slow micropay."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import httpx
import pytest
from wechatpy.pay.utils import dict_to_xml

from backend.gateways.errors import GatewayBadAnswer, GatewayRejected, GatewayUnavailable
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
from backend.payments.online.wechat import CHINA
from backend.payments.online.wechat_v2 import WechatV2Gateway, sign, signed_by
from tests.payments.online import wechat_fixtures
from tests.payments.online.wechat_fixtures import AUTH_CODE, NotifyReceiver, WechatFake, order_request

wechat_fake = wechat_fixtures.wechat_fake
notify_receiver = wechat_fixtures.notify_receiver

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
MERCHANTS = ("legacy", "hmac")


def verified(receiver: NotifyReceiver, out_trade_no: str) -> list[VerifiedNotification]:
    return [seen for seen in receiver.about(out_trade_no) if isinstance(seen, VerifiedNotification)]


@pytest.mark.parametrize("name", MERCHANTS)
@pytest.mark.parametrize(("scene", "kind"), [(OrderScene.app, PayloadKind.app_params), (OrderScene.h5, PayloadKind.pay_url),
                                             (OrderScene.jsapi, PayloadKind.jsapi),
                                             (OrderScene.native, PayloadKind.code_url)])
def test_each_scene_pays_and_its_notification_verifies(wechat_fake: WechatFake, notify_receiver: NotifyReceiver,
                                                       name: str, scene: OrderScene, kind: PayloadKind) -> None:
    gateway = wechat_fake.gateway(name)
    merchant = wechat_fake.merchant(name)
    order = order_request(scene, notify_receiver.v2_url, amount_fen=2001, openid=OPENID if scene is OrderScene.jsapi else None)

    payload = gateway.create(order)
    assert gateway.query(order.out_trade_no).state is TradeState.waiting
    paid = wechat_fake.pay(order.out_trade_no)

    assert payload.kind is kind
    if isinstance(payload.value, dict):  # app and jsapi parameters are signed with the API key
        signature = payload.value.get("sign") or payload.value["paySign"]
        unsigned = {key: value for key, value in payload.value.items() if key not in ("sign", "paySign")}
        assert merchant.api_key is not None and signature == sign(unsigned, merchant.api_key, merchant.sign_type)
    assert paid["sent"][0]["status"] == 200 and "SUCCESS" in paid["sent"][0]["body"]
    [notification] = verified(notify_receiver, order.out_trade_no)
    assert notification.amount_fen == 2001 and notification.paid and notification.trade_no
    status = gateway.query(order.out_trade_no)
    assert status.state is TradeState.paid and status.amount_fen == 2001 and status.paid_at is not None


def test_the_jsapi_bridge_checks_the_pay_sign(wechat_fake: WechatFake, notify_receiver: NotifyReceiver) -> None:
    gateway = wechat_fake.gateway("hmac")
    order = order_request(OrderScene.jsapi, notify_receiver.v2_url, openid=OPENID, amount_fen=99)
    params = gateway.create(order).value
    assert isinstance(params, dict) and params["signType"] == "HMAC-SHA256"

    forged = httpx.get(jsapi_url(wechat_fake.url, {**params, "paySign": "0" * 64}))
    page = httpx.get(jsapi_url(wechat_fake.url, params))
    action = page.text.split('action="', 1)[1].split('"', 1)[0]
    result = httpx.post(wechat_fake.url + action, data={"redirect_url": ""})

    assert forged.status_code == 400 and page.status_code == 200 and "¥0.99" in page.text
    assert result.status_code == 200 and "支付成功" in result.text
    assert [n.amount_fen for n in verified(notify_receiver, order.out_trade_no)] == [99]


@pytest.mark.parametrize("name", MERCHANTS)
def test_forged_tampered_and_replayed_notifications(wechat_fake: WechatFake, notify_receiver: NotifyReceiver,
                                                    name: str) -> None:
    gateway = wechat_fake.gateway(name)
    forged_order, tampered_order, replayed_order = (order_request(OrderScene.native, notify_receiver.v2_url, amount_fen=700)
                                                    for _ in range(3))
    for order in (forged_order, tampered_order, replayed_order):
        gateway.create(order)

    forged = wechat_fake.pay(forged_order.out_trade_no, mode="forge_signature")
    tampered = wechat_fake.pay(tampered_order.out_trade_no, mode="tamper_amount")
    wrong = wechat_fake.pay(tampered_order.out_trade_no, mode="wrong_amount", amount_fen=701)
    replayed = wechat_fake.pay(replayed_order.out_trade_no, mode="replay", times=10)

    assert "FAIL" in forged["sent"][0]["body"] and "FAIL" in tampered["sent"][0]["body"]
    [refusal] = notify_receiver.about(forged_order.out_trade_no)
    assert isinstance(refusal, NotificationRejected) and refusal.reason == "bad signature"
    assert gateway.query(forged_order.out_trade_no).state is TradeState.waiting
    assert "SUCCESS" in wrong["sent"][0]["body"]  # correctly signed: the amount check is the caller's
    assert [n.amount_fen for n in verified(notify_receiver, tampered_order.out_trade_no)] == [701]
    assert all("SUCCESS" in sent["body"] for sent in replayed["sent"]) and len(replayed["sent"]) == 10


def test_notifications_that_are_not_xml_or_for_another_merchant_are_refused(wechat_fake: WechatFake) -> None:
    merchant = wechat_fake.merchant("legacy")
    assert merchant.api_key is not None
    fields = {"appid": merchant.app_id, "mch_id": merchant.mch_id, "return_code": "SUCCESS", "result_code": "SUCCESS",
              "out_trade_no": "SW202612070000000009", "transaction_id": "4200", "total_fee": "100",
              "time_end": "20261207100000", "nonce_str": "n"}
    genuine = dict_to_xml(fields, sign(fields, merchant.api_key)).encode()
    bad_fee = {**fields, "total_fee": "1.00"}
    gateway = WechatV2Gateway(merchant, wechat_fake.settings)
    other_app = WechatV2Gateway(dataclasses.replace(merchant, app_id="wx00000000000000ff"), wechat_fake.settings)

    assert gateway.verify_notification({}, genuine).amount_fen == 100
    with pytest.raises(NotificationRejected, match="not an XML body"):
        gateway.verify_notification({}, b'{"total_fee": 100}')
    with pytest.raises(NotificationRejected, match="app id wx0000000000000002 is not this merchant's"):
        other_app.verify_notification({}, genuine)
    with pytest.raises(NotificationRejected, match="total_fee"):
        gateway.verify_notification({}, dict_to_xml(bad_fee, sign(bad_fee, merchant.api_key)).encode())
    assert b"<return_code><![CDATA[SUCCESS]]>" in gateway.answer(True).body
    assert b"FAIL" in gateway.answer(False).body
    assert signed_by({**fields, "sign": sign(fields, merchant.api_key, "HMAC-SHA256")}, merchant.api_key, "HMAC-SHA256")


@pytest.mark.parametrize("name", MERCHANTS)
def test_close_reverse_refund_and_the_statement(wechat_fake: WechatFake, notify_receiver: NotifyReceiver,
                                                name: str) -> None:
    gateway = wechat_fake.gateway(name)
    unpaid, paid = (order_request(OrderScene.native, notify_receiver.v2_url, amount_fen=1500) for _ in range(2))
    gateway.create(unpaid)
    gateway.create(paid)
    wechat_fake.pay(paid.out_trade_no)
    out_refund_no = "RF" + paid.out_trade_no[2:]

    gateway.close(unpaid.out_trade_no)
    gateway.close(unpaid.out_trade_no)
    with pytest.raises(GatewayRejected) as refused:
        gateway.close(paid.out_trade_no)
    asked = gateway.refund(paid.out_trade_no, out_refund_no=out_refund_no, amount_fen=500, total_fen=1500,
                           reason="销户退费")
    done = gateway.query_refund(paid.out_trade_no, out_refund_no=out_refund_no)
    missing = gateway.query_refund(paid.out_trade_no, out_refund_no="RF00000001")
    lines = [line for line in gateway.statement(datetime.now(CHINA).date()) if line.out_trade_no == paid.out_trade_no]

    assert "ORDERPAID" in (refused.value.detail or "")
    assert gateway.query(unpaid.out_trade_no).state is TradeState.closed
    assert asked.state is GatewayRefundState.processing and asked.amount_fen == 500
    assert done.state is GatewayRefundState.succeeded and done.refund_id == asked.refund_id
    assert missing.state is GatewayRefundState.failed
    assert [(line.kind, line.amount_fen) for line in lines] == [(StatementKind.payment, 1500),
                                                                (StatementKind.refund, 500)]
    assert gateway.statement(datetime(2020, 1, 1).date()) == []
    assert gateway.query("SW202612079999999998").state is TradeState.not_found


def test_micropay_paid_slow_declined_and_reversed(wechat_fake: WechatFake) -> None:
    gateway = wechat_fake.gateway("legacy")
    quick, slow, declined, abandoned = (order_request(OrderScene.barcode, "", auth_code=AUTH_CODE) for _ in range(4))

    first = gateway.barcode_pay(quick)
    wechat_fake.script("user_paying", body=1)
    paying = gateway.barcode_pay(slow)
    states = [gateway.query(slow.out_trade_no).state for _ in range(2)]
    wechat_fake.barcode(queries=0, outcome="declined")
    refused = gateway.barcode_pay(declined)
    wechat_fake.barcode(queries=5, outcome="abandoned")
    gateway.barcode_pay(abandoned)
    gateway.cancel(abandoned.out_trade_no)

    assert first.state is TradeState.paid and first.amount_fen == 1234 and first.trade_no
    assert paying.state is TradeState.paying and states == [TradeState.paying, TradeState.paid]
    assert refused.state is TradeState.failed and "NOTENOUGH" in refused.detail
    assert gateway.query(abandoned.out_trade_no).state is TradeState.closed
    bad_code = dataclasses.replace(order_request(OrderScene.barcode, ""), auth_code="12")
    assert gateway.barcode_pay(bad_code).state is TradeState.failed
    assert gateway.barcode_pay(quick).state is TradeState.paying  # a repeat of a paid one (ORDERPAID): query it
    wechat_fake.script("refuse")
    with pytest.raises(GatewayRejected):  # not the payer's doing: an error, not a declined payment
        gateway.barcode_pay(order_request(OrderScene.barcode, "", auth_code=AUTH_CODE))


def test_answers_that_fail_their_signature_or_are_refused(wechat_fake: WechatFake) -> None:
    gateway = wechat_fake.gateway("hmac")

    wechat_fake.script("bad_signature")
    with pytest.raises(GatewayBadAnswer):
        gateway.query("SW202612079999999997")
    wechat_fake.script("unsigned")
    with pytest.raises(GatewayBadAnswer):
        gateway.query("SW202612079999999997")
    wechat_fake.script("refuse")
    with pytest.raises(GatewayRejected) as refused:
        gateway.query("SW202612079999999997")
    wechat_fake.script("error", status=503)
    with pytest.raises(GatewayUnavailable):
        gateway.query("SW202612079999999997")

    assert "NOAUTH" in (refused.value.detail or "")
