"""What the refund and reconciliation tests share: the local Alipay and WeChat Pay served
over HTTP with the test merchants (WeChat: v3 ``demo``, v2 ``legacy`` and a v2
``certified`` that carries a client certificate, as real v2 refunds need), our gateways
pointing at them, and paid orders made in both places.

- :func:`paid_order`: an order credited in our books only, as a notification would (the
  gateway never saw it: a payment "missing on theirs").
- :func:`paid_at_fake`: an order opened at the local gateway, paid there through
  ``/_control/pay`` (its notification goes nowhere, not retried), and credited in our
  books with the gateway's ``trade_no`` (as the active query would): a real trade that
  the gateway can refund and puts on its statement. ``gateway_fen`` opens it at the
  gateway for another amount than ours (an "amount differs" day); ``credit=False``
  leaves it uncredited (a payment "missing on ours").
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.clock import utcnow
from backend.db import transaction
from backend.payments.models import Payment, PaymentChannel, PaymentPurpose
from backend.payments.online.alipay import AlipayGateway, AlipaySettings
from backend.payments.online.credit import credit_order
from backend.payments.online.fakes.alipay import fake_app as alipay_fake_app
from backend.payments.online.fakes.wechat import fake_app as wechat_fake_app
from backend.payments.online.gateway import OnlineGateway, OrderRequest
from backend.payments.online.merchants import AlipayMerchant, Merchant, WechatMerchant, load_merchants
from backend.payments.online.models import GatewayApi, OrderOrigin, OrderScene, PaymentOrder
from backend.payments.online.orders import out_trade_no
from backend.payments.online.registry import SERVICE, OnlinePayments
from backend.payments.online.testkeys import write_test_merchants
from backend.payments.online.wechat import WechatSettings, wechat_gateway
from tests.payments.online.conftest import served
from tests.payments.online.keys import seeded

API = {PaymentChannel.alipay: GatewayApi.alipay, PaymentChannel.wechat: GatewayApi.wechat_v3}
SCENE = {PaymentChannel.alipay: OrderScene.qr, PaymentChannel.wechat: OrderScene.native}
# Where the orders' notifications go: nowhere (the tests credit as the active query does).
NOWHERE = "http://127.0.0.1:9/notify"
CERTIFIED_APP_ID = "wx0000000000000004"
CERTIFIED_MCH_ID = "1230000004"


async def paid_order(session: AsyncSession, *, account_id: int, household_id: int, channel: PaymentChannel,
                     fen: int, at: datetime, merchant: str = "demo") -> tuple[PaymentOrder, Payment]:
    """An order paid ``fen`` at ``at`` through ``channel``, credited as a notification would,
    in our books only."""
    order = await _order(session, account_id=account_id, household_id=household_id, channel=channel, fen=fen, at=at,
                         merchant=merchant, api=API[channel])
    assert order.id is not None
    credited = await credit_order(session, order_id=order.id, trade_no=f"T{order.id}", amount_fen=fen, now=at)
    assert credited.order is not None and credited.payment is not None
    return credited.order, credited.payment


async def _order(session: AsyncSession, *, account_id: int, household_id: int, channel: PaymentChannel, fen: int,
                 at: datetime, merchant: str, api: GatewayApi) -> PaymentOrder:
    number = (await session.execute(text("SELECT nextval('payment_orders_id_seq')"))).scalar_one()
    order = PaymentOrder(id=number, out_trade_no=out_trade_no(number, at, "Asia/Shanghai"), account_id=account_id,
                         household_id=household_id, channel=channel, api=api, merchant=merchant,
                         scene=SCENE[channel], origin=OrderOrigin.resident, purpose=PaymentPurpose.recharge,
                         amount_fen=fen, subject="水费充值", created_by="resident:1", created_at=at,
                         expires_at=at + timedelta(minutes=30))
    session.add(order)
    await session.flush()
    return order


@dataclass
class Fakes:
    """The running local gateways, our gateways to them (``services``: no GatewayClient,
    the SDK calls run on a thread) and their control API."""

    merchants_file: Path
    alipay: str
    wechat: str
    online: OnlinePayments
    alipay_settings: AlipaySettings
    wechat_settings: WechatSettings

    @property
    def services(self) -> dict[str, Any]:
        return {SERVICE: self.online}

    @property
    def environment(self) -> dict[str, str]:
        """What points an app built from the environment at these gateways."""
        return {"SHUIWU_PAYMENTS_CONFIG": str(self.merchants_file), "SHUIWU_ALIPAY_URL": f"{self.alipay}/gateway.do",
                "SHUIWU_ALIPAY_TIMEOUT_S": "5", "SHUIWU_WECHAT_URL": self.wechat, "SHUIWU_WECHAT_TIMEOUT_S": "5"}

    def base(self, channel: PaymentChannel) -> str:
        return self.alipay if channel is PaymentChannel.alipay else self.wechat

    def orders(self, channel: PaymentChannel) -> dict[str, dict[str, Any]]:
        listed = httpx.get(f"{self.base(channel)}/_control/orders", timeout=10).json()["orders"]
        return {order["out_trade_no"]: order for order in listed}

    def pay(self, channel: PaymentChannel, number: str) -> str:
        """Pay ``number`` at the gateway (its notification is not retried): its trade_no."""
        answer = httpx.post(f"{self.base(channel)}/_control/pay", json={"out_trade_no": number, "mode": "normal",
                                                                          "retry": False}, timeout=30)
        answer.raise_for_status()
        return str(self.orders(channel)[number]["trade_no"])


_certificate: list[tuple[bytes, bytes]] = []  # made once per run


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A client certificate and its key, as WeChat's merchant console hands them out."""
    cert_file, key_file = directory / "apiclient_cert.pem", directory / "apiclient_key.pem"
    if not _certificate:
        _certificate.append(_new_certificate())
    cert_file.write_bytes(_certificate[0][0])
    key_file.write_bytes(_certificate[0][1])
    return cert_file, key_file


def _new_certificate() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERTIFIED_MCH_ID)])
    now = datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def write_refund_merchants(directory: Path) -> Path:
    """The test merchants plus the v2 merchant ``certified`` with its client certificate."""
    written = write_test_merchants(seeded(directory), public_base_url="http://127.0.0.1:9")
    cert_file, key_file = _self_signed(directory)
    with written.merchants_file.open("a", encoding="utf-8") as merchants:
        merchants.write(f'''
[[wechat]]
name = "certified"
api = "v2"
app_id = "{CERTIFIED_APP_ID}"
mch_id = "{CERTIFIED_MCH_ID}"
api_key = {{ file = "wechat_v2_api_key" }}
client_cert = {{ file = "{cert_file.name}" }}
client_key = {{ file = "{key_file.name}" }}
''')
    return written.merchants_file


@contextmanager
def local_gateways(directory: Path) -> Iterator[Fakes]:
    """Both local gateways served on free ports, knowing the refund merchants."""
    merchants_file = write_refund_merchants(directory)
    alipay_settings = AlipaySettings(fake_merchants_file=str(merchants_file), fake_notify_retries=False, timeout_s=5)
    wechat_settings = WechatSettings(fake_merchants_file=merchants_file, fake_notify_retries=False, timeout_s=5)
    with served(alipay_fake_app(alipay_settings), "refunds-alipay") as alipay, \
            served(wechat_fake_app(wechat_settings), "refunds-wechat") as wechat:
        to_alipay = alipay_settings.model_copy(update={"url": f"{alipay}/gateway.do"})
        to_wechat = wechat_settings.model_copy(update={"url": wechat})

        def gateway_of(merchant: Merchant) -> OnlineGateway:
            if isinstance(merchant, AlipayMerchant):
                return AlipayGateway(merchant, to_alipay)
            assert isinstance(merchant, WechatMerchant)
            return wechat_gateway(merchant, to_wechat)

        online = OnlinePayments(load_merchants(merchants_file), factory=gateway_of)
        yield Fakes(merchants_file, alipay, wechat, online, to_alipay, to_wechat)


async def paid_at_fake(sessions: async_sessionmaker[AsyncSession], fakes: Fakes, *, account_id: int,
                       household_id: int, channel: PaymentChannel, fen: int, merchant: str = "demo",
                       gateway_fen: int | None = None, credit: bool = True) -> tuple[PaymentOrder, Payment | None]:
    """An order opened and paid at the local gateway, then credited in our books (module
    docstring)."""
    known = fakes.online.merchants.named(channel, merchant)
    assert known is not None
    now = utcnow()
    async with transaction(sessions) as session:
        order = await _order(session, account_id=account_id, household_id=household_id, channel=channel, fen=fen,
                             at=now, merchant=merchant, api=known.api)
    assert order.id is not None
    gateway = fakes.online.gateway(channel, merchant)
    await asyncio.to_thread(gateway.create, OrderRequest(
        out_trade_no=order.out_trade_no, amount_fen=gateway_fen or fen, subject="水费充值", scene=order.scene,
        notify_url=NOWHERE, expires_at=now + timedelta(minutes=30), client_ip="127.0.0.1"))
    trade_no = await asyncio.to_thread(fakes.pay, channel, order.out_trade_no)
    if not credit:
        return order, None
    async with transaction(sessions) as session:
        credited = await credit_order(session, order_id=order.id, trade_no=trade_no, amount_fen=fen, now=utcnow())
    assert credited.order is not None
    return credited.order, credited.payment
