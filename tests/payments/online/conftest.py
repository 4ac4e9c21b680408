"""Fixtures for online payments: the test merchants, the local gateways served over HTTP,
and a notify receiver standing in for our notify routes.

- ``test_merchants`` (session): ``write_test_merchants`` in a temporary directory (keys
  generated once per run); ``.merchants`` is the loaded file. Rewrite it with another
  ``public_base_url`` (the keys are kept) when a live API must be called back.
- ``alipay_fake`` (session): the local Alipay (``fakes/alipay.py``) served by uvicorn in
  a thread on a free port, knowing the test merchants, retrying notifications 1000× faster
  than Alipay; ``.settings`` is an ``AlipaySettings`` pointing at it, ``.gateway()`` the
  ``AlipayGateway`` of the ``demo`` app, ``.pay(...)`` / ``.orders()`` / ``.script(...)`` the
  control API. Reset (requests, scripts) for each test that asks for it.
- ``live_gateways`` (session): both local gateways on the test merchants, for the tests
  that run our app under uvicorn: ``.app(database_url)`` starts it pointed at them
  (test_orders_http's ``world``, test_pages_e2e's ``site``).
- ``notify_receiver`` (module): a Starlette route served by uvicorn that keeps every POST
  (headers, body) and answers ``.reply`` (``b"success"`` by default): what a gateway's
  notification looks like when it arrives.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.db import to_libpq_url
from backend.gateways.http import bound_port, fake_server
from backend.payments.models import PaymentChannel
from backend.payments.online.alipay import AlipayGateway, AlipaySettings
from backend.payments.online.fakes.alipay import fake_app as alipay_fake_app
from backend.payments.online.merchants import AlipayMerchant, Merchants, load_merchants
from backend.payments.online.registry import SERVICE, OnlinePayments
from backend.payments.online.testkeys import TestMerchants, write_test_merchants
from tests.live import LiveServer, live_server
from tests.payments.online.keys import seeded
from tests.payments.online.wechat_fixtures import wechat_fake_server, wechat_notify_server

# The local WeChat Pay and its receiver, once per run (wechat_fixtures.py).
__all__ = ["wechat_fake_server", "wechat_notify_server"]


@contextmanager
def served(app: Any, name: str) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free loopback port: its URL."""
    server = fake_server(app)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{bound_port(server)}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass(frozen=True)
class MerchantsFile:
    written: TestMerchants
    merchants: Merchants

    @property
    def path(self) -> Path:
        return self.written.merchants_file


@pytest.fixture(scope="session")
def test_merchants(tmp_path_factory: pytest.TempPathFactory) -> MerchantsFile:
    written = write_test_merchants(seeded(tmp_path_factory.mktemp("merchants")), public_base_url="http://127.0.0.1:8000")
    return MerchantsFile(written, load_merchants(written.merchants_file))


@dataclass(frozen=True)
class AlipayFake:
    """The running local Alipay and its control API."""

    url: str
    settings: AlipaySettings
    merchant: AlipayMerchant

    def gateway(self, **settings: Any) -> AlipayGateway:
        return AlipayGateway(self.merchant, self.settings.model_copy(update=settings))

    def pay(self, out_trade_no: str, mode: str = "normal", **options: Any) -> dict[str, Any]:
        """POST /_control/pay: pays (as ``mode`` says) and answers what our server replied."""
        response = httpx.post(f"{self.url}/_control/pay", json={"out_trade_no": out_trade_no, "mode": mode, **options},
                              timeout=30)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def orders(self) -> dict[str, dict[str, Any]]:
        listed = httpx.get(f"{self.url}/_control/orders").json()["orders"]
        return {order["out_trade_no"]: order for order in listed}

    def script(self, action: str, **options: Any) -> None:
        httpx.post(f"{self.url}/_control/next", json={"action": action, **options}).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_control/reset").raise_for_status()
        httpx.post(f"{self.url}/_control/settings", json={"notify_retries": True, "notify_retry_scale": 0.001}) \
            .raise_for_status()

    def retry_scale(self, scale: float) -> None:
        """Alipay's retry schedule times ``scale`` (until the next reset)."""
        httpx.post(f"{self.url}/_control/settings", json={"notify_retry_scale": scale}).raise_for_status()


@pytest.fixture(scope="session")
def alipay_fake_server(test_merchants: MerchantsFile) -> Iterator[AlipayFake]:
    settings = AlipaySettings(fake_merchants_file=str(test_merchants.path), fake_notify_retry_scale=0.001,
                              timeout_s=5)
    merchant = test_merchants.merchants.default(PaymentChannel.alipay)
    assert isinstance(merchant, AlipayMerchant)
    with served(alipay_fake_app(settings), "fake-alipay") as url:
        yield AlipayFake(url, settings.model_copy(update={"url": f"{url}/gateway.do"}), merchant)


@pytest.fixture
def alipay_fake(alipay_fake_server: AlipayFake) -> AlipayFake:
    alipay_fake_server.reset()
    return alipay_fake_server


@dataclass(frozen=True)
class LiveGateways:
    """The local Alipay and WeChat Pay the live-app tests share (once per run), knowing the
    merchants file in ``directory`` (the test merchants; a module rewrites it with its own
    API's URL as ``public_base_url``), retrying notifications 1000× faster than the real ones."""

    directory: Path
    merchants_file: Path
    alipay: str
    wechat: str

    @property
    def environment(self) -> dict[str, str]:
        """What points an app built from the environment at these gateways."""
        return {"SHUIWU_PAYMENTS_CONFIG": str(self.merchants_file), "SHUIWU_ALIPAY_URL": f"{self.alipay}/gateway.do",
                "SHUIWU_ALIPAY_TIMEOUT_S": "5", "SHUIWU_WECHAT_URL": self.wechat, "SHUIWU_WECHAT_TIMEOUT_S": "5",
                # A slow payer at the counter is asked about every 0.1 s, not every 3 s.
                "SHUIWU_PAYMENTS_BARCODE_POLL_S": "0.1"}

    modules: list[str] = field(default_factory=list)

    def take(self, database_url: str) -> None:
        """Ready for a module on ``database_url``: retries on, compressed 1000×; and its
        orders numbered in a range of their own (the gateways hold every module's orders,
        and each module's database numbers its orders from 1: out_trade_no would repeat)."""
        for base in (self.alipay, self.wechat):
            httpx.post(f"{base}/_control/settings", json={"notify_retries": True, "notify_retry_scale": 0.001},
                       timeout=10).raise_for_status()
        self.modules.append(database_url)
        start = len(self.modules) * 10_000_000

        async def number() -> None:
            import asyncpg

            connection = await asyncpg.connect(to_libpq_url(database_url))
            try:
                await connection.execute(f"SELECT setval('payment_orders_id_seq', {start})")
            finally:
                await connection.close()

        anyio.run(number)

    @contextmanager
    def app(self, database_url: str) -> Iterator[tuple[LiveServer, OnlinePayments]]:
        """Our app under uvicorn on ``database_url``, built from an environment pointing at
        these gateways, with the merchants file rewritten for its URL (the platforms call
        the API back, and the payer returns to it, where it listens: known only now).
        Yields the server and its online payments service, which has read that file."""
        self.take(database_url)
        saved = dict(os.environ)
        os.environ.update(self.environment)
        try:
            with live_server(database_url) as api:
                write_test_merchants(self.directory, public_base_url=api.url)
                online: OnlinePayments = api.app.state.services[SERVICE]
                online.merchants = load_merchants(self.merchants_file)
                yield api, online
        finally:
            os.environ.clear()
            os.environ.update(saved)


@pytest.fixture(scope="session")
def live_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateways]:
    from backend.payments.online.fakes.wechat import fake_app as wechat_fake_app
    from backend.payments.online.wechat import WechatSettings

    directory = seeded(tmp_path_factory.mktemp("live-merchants"))
    written = write_test_merchants(directory, public_base_url="http://127.0.0.1:9")
    alipay_settings = AlipaySettings(fake_merchants_file=str(written.merchants_file), fake_notify_retry_scale=0.001,
                                     timeout_s=5)
    wechat_settings = WechatSettings(fake_merchants_file=written.merchants_file, fake_notify_retry_scale=0.001,
                                     timeout_s=5)
    with served(alipay_fake_app(alipay_settings), "live-alipay") as alipay, \
            served(wechat_fake_app(wechat_settings), "live-wechat") as wechat:
        yield LiveGateways(directory, written.merchants_file, alipay, wechat)


@dataclass
class NotifyReceiver:
    """What was posted to the receiver, and what it answers."""

    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    reply: bytes = b"success"

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} notifications arrived, not {count}")
            time.sleep(0.01)
        return self.received


@pytest.fixture(scope="module")
def notify_receiver() -> Iterator[NotifyReceiver]:
    receiver = NotifyReceiver(url="")

    async def notify(request: Request) -> Response:
        receiver.received.append((dict(request.headers), await request.body()))
        return Response(receiver.reply, media_type="text/plain")

    app = Starlette(routes=[Route("/notify", notify, methods=["POST"])])
    with served(app, "notify-receiver") as url:
        receiver.url = f"{url}/notify"
        yield receiver
