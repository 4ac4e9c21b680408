"""The SMS senders for residents' login and household binding codes (docs/sms.md).

``SHUIWU_SMS_SENDER`` picks one, in the ``sms`` gateway's settings
(:class:`backend.auth.sms.settings.SmsSettings`): ``log`` writes the code to the log
(development and the demo: nothing is sent); ``aliyun`` and ``tencent`` send it through
the gateway ``gateway.sms`` (its own threads, its timeout, typed failures), signed as
each vendor's API wants it (:mod:`.aliyun`, :mod:`.tencent`). A vendor's refusal is a
typed error the resident sees (:mod:`.refusals`), never INTERNAL.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from backend.auth.service.policy import SmsSender
from backend.auth.sms import aliyun, tencent
from backend.auth.sms.settings import SmsSettings
from backend.clock import utcnow
from backend.gateways.client import GatewayClient, service_name

log = logging.getLogger("shuiwu.sms")

# The service the hosts offer the sms gateway's client under.
SMS_SERVICE = service_name("sms")


class LogSmsSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send_login_code(self, phone: str, code: str) -> None:
        self.sent.append((phone, code))
        del self.sent[:-100]  # keep only the latest, for the demo and tests
        log.warning("SMS login code for %s: %s (sms_sender=log: nothing was really sent)", phone, code)

    async def send_binding_code(self, phone: str, code: str, account_no: str) -> None:
        self.sent.append((phone, code))
        del self.sent[:-100]
        log.warning("SMS household binding code for %s (account %s): %s (sms_sender=log: nothing was really sent)",
                    phone, account_no, code)

    async def send_text(self, phone: str, template: str | None, content: str) -> None:
        """A notification (notifications' SMS channel): logged, as the codes are."""
        self.sent.append((phone, content))
        del self.sent[:-100]
        log.warning("SMS to %s: %s (sms_sender=log: nothing was really sent)", phone, content)


class GatewaySmsSender:
    """Sends codes through the ``sms`` gateway to the vendor its settings name."""

    def __init__(self, client: GatewayClient) -> None:
        settings = client.settings
        if not isinstance(settings, SmsSettings) or settings.sender == "log":
            raise ValueError("the sms gateway is not configured for a vendor")
        self.client = client
        self.settings = settings

    async def send_login_code(self, phone: str, code: str) -> None:
        assert self.settings.login_template is not None  # SmsSettings refuses a vendor without it
        await self._send("login", phone, self.settings.login_template, {"code": code})

    async def send_binding_code(self, phone: str, code: str, account_no: str) -> None:
        assert self.settings.binding_template is not None
        values = {"code": code, "account": account_no}
        await self._send("binding", phone, self.settings.binding_template,
                         {name: values[name] for name in self.settings.binding_param_names()})

    async def send_text(self, phone: str, template: str | None, content: str) -> None:
        """A notification through the vendor's approved notification ``template`` whose one
        parameter ``content`` is the text (notifications' SMS channel, docs/notifications.md)."""
        if not template:
            raise ValueError("SHUIWU_NOTIFICATIONS_SMS_TEMPLATE is not set: no notification template to send with")
        await self._send("notice", phone, template, {"content": content})

    async def _send(self, kind: str, phone: str, template: str, params: Mapping[str, str]) -> dict[str, Any]:
        settings = self.settings
        request: dict[str, Any]
        if settings.sender == "aliyun":
            request = aliyun.send_request(settings, phone=phone, template=template, params=params,
                                          nonce=str(uuid.uuid4()), now=utcnow())
            function = aliyun.post
        else:
            request = tencent.send_request(settings, phone=phone, template=template, params=list(params.values()),
                                           now=utcnow())
            function = tencent.post
        # What an exchange or a warning may show: never the code.
        described = {"kind": kind, "template": template, "phone": phone[:3] + "****" + phone[-4:]}
        answer: dict[str, Any] = await self.client.call(f"{settings.sender}.{kind}", function, settings, request,
                                                        request=described)
        return answer


_log_sender = LogSmsSender()


def sms_sender(name: str) -> LogSmsSender:
    """The process's ``log`` sender (one instance, so tests and the demo can read what it sent)."""
    if name != "log":
        raise ValueError(f"unknown SMS sender {name!r}")
    return _log_sender


def sender_for(services: Mapping[str, Any]) -> SmsSender:
    """The sender the installation's ``SHUIWU_SMS_SENDER`` names, from the hosts' services."""
    client = services[SMS_SERVICE]
    if client.settings.sender == "log":
        return _log_sender
    return GatewaySmsSender(client)
