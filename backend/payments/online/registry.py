"""Online payments as a service (``payments.online``): the merchants file loaded at start
and one :class:`~backend.payments.online.gateway.OnlineGateway` per merchant.

The hosts build it once from ``SHUIWU_PAYMENTS_CONFIG`` (:func:`offered`, the payments
declaration's services): a file with mistakes stops the process with one line per
mistake, as ``shuiwu check`` (``payments.merchants``) prints them. A merchant's gateway
object is built on first use from its entry and the channel's gateway settings
(``SHUIWU_ALIPAY_URL`` / ``SHUIWU_WECHAT_URL`` point the SDKs at the local fakes); its
blocking methods run through the channel's :class:`backend.gateways.client.GatewayClient`
(:func:`call_gateway`), which bounds time and threads and keeps the exchange.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from backend.payments.models import PaymentChannel
from backend.payments.online import errors
from backend.payments.online.gateway import OnlineGateway
from backend.payments.online.merchants import Merchant, Merchants, MerchantsInvalid, load_merchants
from backend.payments.online.models import GatewayApi

SERVICE = "payments.online"
T = TypeVar("T")

# Per protocol: the gateway class ("module:Class", built as Class(merchant, settings)) and
# its channel's gateway settings ("module:Settings", SHUIWU_ALIPAY_* / SHUIWU_WECHAT_*:
# the URL the SDK talks to, the timeout), imported on first use.
GATEWAY_CLASSES: dict[GatewayApi, tuple[str, str]] = {
    GatewayApi.alipay: ("backend.payments.online.alipay:AlipayGateway", "backend.payments.online.alipay:AlipaySettings"),
    GatewayApi.wechat_v2: ("backend.payments.online.wechat_v2:WechatV2Gateway",
                           "backend.payments.online.wechat_v2:WechatSettings"),
    GatewayApi.wechat_v3: ("backend.payments.online.wechat_v3:WechatV3Gateway",
                           "backend.payments.online.wechat_v3:WechatSettings"),
}

GatewayFactory = Callable[[Merchant], OnlineGateway]


def _attribute(reference: str) -> Any:
    module_name, _, name = reference.partition(":")
    return getattr(importlib.import_module(module_name), name)


def _default_factory(merchant: Merchant) -> OnlineGateway:
    from backend.domain import read_settings

    gateway_class, settings_class = GATEWAY_CLASSES[merchant.api]
    return _attribute(gateway_class)(merchant, read_settings(_attribute(settings_class)))  # type: ignore[no-any-return]


class OnlinePayments:
    """The merchants and their gateways (one object per merchant, built once)."""

    def __init__(self, merchants: Merchants, *, factory: GatewayFactory | None = None,
                 gateways: Mapping[tuple[PaymentChannel, str], OnlineGateway] | None = None) -> None:
        self.merchants = merchants
        self._factory = factory or _default_factory
        self._gateways: dict[tuple[PaymentChannel, str], OnlineGateway] = dict(gateways or {})

    def configured(self, channel: PaymentChannel) -> bool:
        return self.merchants.default(channel) is not None

    def gateway(self, channel: PaymentChannel, name: str) -> OnlineGateway:
        """Merchant ``name``'s gateway (PAYMENT_CHANNEL_UNAVAILABLE: no such merchant)."""
        channel = PaymentChannel(channel)
        found = self._gateways.get((channel, name))
        if found is not None:
            return found
        merchant = self.merchants.named(channel, name)
        if merchant is None:
            raise errors.PaymentChannelUnavailable(field="channel")
        built = self._gateways[(channel, name)] = self._factory(merchant)
        return built

    def default(self, channel: PaymentChannel) -> OnlineGateway:
        """The channel's default merchant's gateway (PAYMENT_CHANNEL_UNAVAILABLE: none)."""
        merchant = self.merchants.default(PaymentChannel(channel))
        if merchant is None:
            raise errors.PaymentChannelUnavailable(field="channel")
        return self.gateway(merchant.channel, merchant.name)

    def of_api(self, api: GatewayApi) -> list[tuple[Merchant, OnlineGateway]]:
        """Every merchant speaking ``api`` with its gateway (the notify routes look among them)."""
        channel = PaymentChannel.alipay if api is GatewayApi.alipay else PaymentChannel.wechat
        return [(m, self.gateway(channel, m.name)) for m in self.merchants.of_channel(channel) if m.api is api]

    def notify_url(self, channel: PaymentChannel, api: GatewayApi) -> str:
        """Where the platform posts ``api``'s notifications (DESIGN: the notify routes)."""
        return self.merchants.public_base_url + NOTIFY_PATHS[api]


NOTIFY_PATHS: dict[GatewayApi, str] = {
    GatewayApi.alipay: "/pay/alipay/notify",
    GatewayApi.wechat_v2: "/pay/wechat/notify",
    GatewayApi.wechat_v3: "/pay/wechat/v3/notify",
}


def merchants_mistakes(path: Any) -> list[str]:
    """The merchants file's mistakes, one line each (empty: it is fine or not set)."""
    try:
        load_merchants(path)
    except MerchantsInvalid as invalid:
        return invalid.lines
    return []


def offered(settings: Any) -> dict[str, Any]:
    """The payments declaration's services: ``payments.online``. A merchants file with
    mistakes stops the host at start, one line per mistake."""
    from backend.domain import read_settings
    from backend.payments.settings import PaymentsSettings
    from backend.settings import SettingsError

    group = read_settings(PaymentsSettings)
    try:
        merchants = load_merchants(group.config)
    except MerchantsInvalid as invalid:
        raise SettingsError("bad merchants file SHUIWU_PAYMENTS_CONFIG:\n  " + "\n  ".join(invalid.lines)) from None
    return {SERVICE: OnlinePayments(merchants)}


def online_payments(services: Mapping[str, Any]) -> OnlinePayments:
    """The ``payments.online`` service of a host's services (none configured: no merchants)."""
    found = services.get(SERVICE)
    return found if isinstance(found, OnlinePayments) else OnlinePayments(Merchants())


async def call_gateway(services: Mapping[str, Any], gateway: OnlineGateway, operation: str,
                       function: Callable[..., T], *args: Any, request: Any = None,
                       reference: str | None = None) -> T:
    """``function(*args)`` (one of ``gateway``'s blocking methods) through the channel's
    GatewayClient (``gateway.alipay`` / ``gateway.wechat``: bounded, kept); without one
    declared (a test's stand-in gateway) on a thread of the loop's executor."""
    client = services.get(f"gateway.{gateway.merchant.channel.value}")
    if client is not None:
        return await client.call(operation, function, *args, request=request,  # type: ignore[no-any-return]
                                 reference=reference)
    return await asyncio.to_thread(function, *args)


async def merchants_check(runtime: Any) -> Any:
    """``shuiwu check``'s ``payments.merchants`` line: the merchants file reads, with each
    mistake on a line of its own."""
    from backend.domain import CheckResult, read_settings
    from backend.payments.settings import PaymentsSettings

    path = read_settings(PaymentsSettings).config
    if path is None:
        return CheckResult(True, "no merchants file (SHUIWU_PAYMENTS_CONFIG): online payment is off")
    mistakes = merchants_mistakes(path)
    if mistakes:
        return CheckResult(False, f"{len(mistakes)} mistake(s) in {path}:\n      " + "\n      ".join(mistakes))
    merchants = load_merchants(path)
    names = [f"alipay {m.name}" for m in merchants.alipay] + [f"wechat {m.name} ({m.api.value})"
                                                               for m in merchants.wechat]
    return CheckResult(True, f"{path}: {', '.join(names) or 'no merchants'}; call back at {merchants.public_base_url}")
