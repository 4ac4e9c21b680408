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
- ``notify_receiver`` (module): a Starlette route served by uvicorn that keeps every POST
  (headers, body) and answers ``.reply`` (``b"success"`` by default): what a gateway's
  notification looks like when it arrives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
from backend.payments.online.alipay import AlipayGateway, AlipaySettings
from backend.payments.online.fakes.alipay import fake_app as alipay_fake_app
from backend.payments.online.merchants import AlipayMerchant, Merchants, load_merchants
from backend.payments.online.testkeys import TestMerchants, write_test_merchants
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
