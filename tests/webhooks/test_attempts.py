"""One delivery attempt (``post_once``) always ends as a recorded result: it is bounded by
``timeout_s`` as a whole, however slowly a receiver answers; an internationalised host
name is sent in its ASCII (IDNA) form (anything unexpected is a failed attempt:
test_deliveries.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time

import pytest

from backend.webhooks import errors, service, ssrf
from backend.webhooks.settings import WebhookSettings
from tests.webhooks.conftest import Receiver


async def test_an_attempt_is_bounded_by_timeout_s_even_when_the_answer_trickles_in() -> None:
    # httpx's own timeout bounds each read: a header line every 0.15 s would never trip it.
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        with contextlib.suppress(ConnectionError):
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(40):
                writer.write(b"X-Slow: a\r\n")
                await writer.drain()
                await asyncio.sleep(0.15)
        writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    try:
        result = await service.post_once(f"http://127.0.0.1:{port}/hook", body=b"{}", headers={},
                                         settings=WebhookSettings(allow_private=True, timeout_s=0.5))
    finally:
        server.close()

    assert time.monotonic() - started < 1.0
    assert (result.status_code, result.error, result.refused) == (None, "timed out after 0.5 s", False)


async def test_an_internationalised_host_is_sent_in_its_ascii_form(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    resolved: list[str] = []

    async def here(host: str, port: int) -> list[ssrf.IPAddress]:
        resolved.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(ssrf, "addresses_of", here)

    result = await service.post_once(receiver.url("/ok?idn", host="münchen.de"), body=b"{}", headers={},
                                     settings=WebhookSettings(allow_private=True, timeout_s=5))

    assert result.status_code == 200 and result.succeeded
    assert resolved == ["xn--mnchen-3ya.de"]
    assert receiver.at("/ok?idn")[0].headers["Host"] == f"xn--mnchen-3ya.de:{receiver.port}"


async def test_a_host_name_without_an_ascii_form_is_an_invalid_url() -> None:
    with pytest.raises(errors.WebhookUrlInvalid):
        await ssrf.resolve_target("http://" + "ü" * 64 + ".de/", allow_private=True)
