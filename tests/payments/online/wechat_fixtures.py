"""The local WeChat Pay for tests: test merchants, the fake served by uvicorn, and a tiny
notify receiver that verifies what the fake sends with the real gateway classes.

Use them from a test module by naming them at module level (module fixtures handing out
the run's one fake and receiver, ``wechat_fake_server`` / ``wechat_notify_server``, which
the package's conftest registers)::

    from tests.payments.online import wechat_fixtures

    wechat_fake = wechat_fixtures.wechat_fake
    notify_receiver = wechat_fixtures.notify_receiver

    def test_it(wechat_fake: WechatFake, notify_receiver: NotifyReceiver) -> None:
        gateway = wechat_fake.gateway("demo")             # WechatV3Gateway against the fake
        gateway.create(order_request(..., notify_url=notify_receiver.v3_url))
        wechat_fake.pay(out_trade_no)                     # the fake pays and notifies (the control API)

The merchants are :func:`backend.payments.online.testkeys.write_test_merchants`'s (v3
``demo``, v2 ``legacy`` signing MD5) plus a v2 merchant ``hmac`` signing HMAC-SHA256.
Retries of unanswered notifications are compressed 1000× (15 s → 15 ms).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.gateways.http import bound_port, fake_server
from backend.payments.models import PaymentChannel
from backend.payments.online.fakes.wechat import fake_app
from backend.payments.online.gateway import NotificationRejected, OnlineGateway, OrderRequest, VerifiedNotification
from backend.payments.online.merchants import Merchants, WechatMerchant, load_merchants
from backend.payments.online.models import GatewayApi, OrderScene
from backend.payments.online.testkeys import write_test_merchants
from backend.payments.online.wechat import WechatSettings, notification_merchants, wechat_gateway
from tests.payments.online.keys import seeded

HMAC_APP_ID = "wx0000000000000003"
HMAC_MCH_ID = "1230000002"
RETRY_SCALE = 0.001
# WeChat payment codes (付款码): 18 digits starting 10-15.
AUTH_CODE = "134567890123456789"


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free loopback port; yields its URL."""
    server = fake_server(app)
    thread = threading.Thread(target=server.run, name="wechat-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{bound_port(server)}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def write_wechat_test_merchants(directory: Path) -> Path:
    """The test merchants file with a third merchant, v2 ``hmac`` (HMAC-SHA256)."""
    written = write_test_merchants(seeded(directory), public_base_url="http://127.0.0.1:9")
    with written.merchants_file.open("a", encoding="utf-8") as merchants:
        merchants.write(f'''
[[wechat]]
name = "hmac"
api = "v2"
app_id = "{HMAC_APP_ID}"
mch_id = "{HMAC_MCH_ID}"
api_key = {{ file = "wechat_v2_api_key" }}
sign_type = "HMAC-SHA256"
app_secret = {{ file = "wechat_v2_app_secret" }}
''')
    return written.merchants_file


@dataclass
class WechatFake:
    """The running fake: its URL, the client settings pointing at it, and its control API."""

    url: str
    settings: WechatSettings
    merchants: Merchants
    http: httpx.Client = field(repr=False)

    def merchant(self, name: str) -> WechatMerchant:
        merchant = self.merchants.named(PaymentChannel.wechat, name)
        assert isinstance(merchant, WechatMerchant)
        return merchant

    def gateway(self, name: str) -> OnlineGateway:
        return wechat_gateway(self.merchant(name), self.settings)

    def pay(self, out_trade_no: str, mode: str = "normal", times: int = 1, **options: Any) -> dict[str, Any]:
        """``POST /_control/pay`` (``retry=``, ``amount_fen=``): ``{"sent": […], "order": {…}}``."""
        response = self.http.post("/_control/pay", json={"out_trade_no": out_trade_no, "mode": mode, "times": times,
                                                          **options})
        response.raise_for_status()
        paid: dict[str, Any] = response.json()
        return paid

    def orders(self) -> dict[str, dict[str, Any]]:
        return {order["out_trade_no"]: order for order in self.http.get("/_control/orders").json()["orders"]}

    def notifications(self, out_trade_no: str) -> list[dict[str, Any]]:
        return [sent for sent in self.http.get("/_control/notifications").json()["notifications"]
                if sent["out_trade_no"] == out_trade_no]

    def barcode(self, *, queries: int, outcome: str = "paid") -> None:
        self.http.post("/_control/barcode", json={"queries": queries, "outcome": outcome}).raise_for_status()

    def retries(self, *, enabled: bool, scale: float = RETRY_SCALE) -> None:
        self.http.post("/_control/settings", json={"notify_retries": enabled, "notify_retry_scale": scale}) \
            .raise_for_status()

    def script(self, action: str, **options: Any) -> None:
        self.http.post("/_control/next", json={"action": action, **options}).raise_for_status()


@dataclass
class NotifyReceiver:
    """Our notify routes in miniature: each notification verified by the gateway of the
    merchant it names, answered with that gateway's answer. ``refuse_next`` answers that
    many failures first (to make the fake retry)."""

    url: str
    received: list[VerifiedNotification | NotificationRejected] = field(default_factory=list)
    refuse_next: int = 0

    @property
    def v2_url(self) -> str:
        return f"{self.url}/pay/wechat/notify"

    @property
    def v3_url(self) -> str:
        return f"{self.url}/pay/wechat/v3/notify"

    def about(self, out_trade_no: str) -> list[VerifiedNotification | NotificationRejected]:
        return [seen for seen in self.received if seen.out_trade_no == out_trade_no]


def receiver_app(receiver: NotifyReceiver, merchants: Merchants, settings: WechatSettings) -> Starlette:
    def route(api: GatewayApi) -> Any:
        async def notify(request: Request) -> Response:
            body = await request.body()
            headers = dict(request.headers)
            candidates = notification_merchants(merchants.wechat, api, headers, body)
            gateways = [wechat_gateway(merchant, settings) for merchant in candidates]
            verified: VerifiedNotification | None = None
            rejections: list[NotificationRejected] = []
            for gateway in gateways:
                try:
                    verified = gateway.verify_notification(headers, body)
                    break
                except NotificationRejected as rejected:
                    rejections.append(rejected)
            outcome = verified or rejections[0]
            receiver.received.append(outcome)
            accepted = isinstance(outcome, VerifiedNotification)
            if accepted and receiver.refuse_next > 0:
                receiver.refuse_next -= 1
                accepted = False
            answer = gateways[0].answer(accepted)
            return Response(answer.body, answer.status, media_type=answer.media_type)

        return notify

    return Starlette(routes=[Route("/pay/wechat/notify", route(GatewayApi.wechat_v2), methods=["POST"]),
                             Route("/pay/wechat/v3/notify", route(GatewayApi.wechat_v3), methods=["POST"])])


@pytest.fixture(scope="session")
def wechat_fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WechatFake]:
    """The fake, once per run (registered by the package's conftest)."""
    merchants_file = write_wechat_test_merchants(tmp_path_factory.mktemp("wechat-merchants"))
    settings = WechatSettings(fake_merchants_file=merchants_file, fake_notify_retry_scale=RETRY_SCALE, timeout_s=5)
    with serving(fake_app(settings)) as url, httpx.Client(base_url=url, timeout=10) as http:
        yield WechatFake(url, settings.model_copy(update={"url": url, "oauth_url": url, "sns_url": url}),
                         load_merchants(merchants_file), http)


@pytest.fixture(scope="session")
def wechat_notify_server(wechat_fake_server: WechatFake) -> Iterator[NotifyReceiver]:
    """The receiver, once per run (registered by the package's conftest)."""
    receiver = NotifyReceiver(url="")
    with serving(receiver_app(receiver, wechat_fake_server.merchants, wechat_fake_server.settings)) as url:
        receiver.url = url
        yield receiver


@pytest.fixture(scope="module")
def wechat_fake(wechat_fake_server: WechatFake) -> WechatFake:
    """The run's fake, its retries as a module starts (on, compressed 1000×)."""
    wechat_fake_server.retries(enabled=True)
    return wechat_fake_server


@pytest.fixture(scope="module")
def notify_receiver(wechat_notify_server: NotifyReceiver) -> NotifyReceiver:
    wechat_notify_server.refuse_next = 0
    return wechat_notify_server


_serial = iter(range(1, 10**9))


def order_request(scene: OrderScene, notify_url: str, *, amount_fen: int = 1234, openid: str | None = None,
                  auth_code: str | None = None, return_url: str | None = None) -> OrderRequest:
    """A fresh order (out_trade_no as the orders code makes them: SW + day + id padded to 10)."""
    now = datetime.now(UTC)
    out_trade_no = f"SW{now:%Y%m%d}{int(time.time() * 1000) % 10**6:06d}{next(_serial):04d}"
    return OrderRequest(out_trade_no=out_trade_no, amount_fen=amount_fen, subject="水费充值 1001-0203", scene=scene,
                        notify_url=notify_url, expires_at=now + timedelta(minutes=30), client_ip="127.0.0.1",
                        return_url=return_url, openid=openid, auth_code=auth_code)
