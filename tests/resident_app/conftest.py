"""The resident app's tests run against the real API on a copy of the small demo, with
residents' codes sent through the local SMS gateway (Aliyun's fake): a test reads a code
from what the vendor was asked to send, as a resident reads their phone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import text

from backend.auth.sms.fake import FAKE_ACCESS_KEY_ID, FAKE_ACCESS_KEY_SECRET, sent_codes
from backend.db import create_engine
from tests import small_demo
from tests.fixtures.gateways import FakeGateway, FakeGateways
from tests.live import LiveServer, live_server
from tests.resident_app.session import AppSession

database_url = small_demo.database_url
# Code attempts a phone gets a day before the API locks it out (the lockout test's).
CODE_ATTEMPTS_PER_DAY = 3


@pytest.fixture(scope="module")
def sms(fake_gateways: FakeGateways) -> Iterator[FakeGateway]:
    """The SMS vendor's fake, and the API's settings pointing at it."""
    fake = fake_gateways.start("sms")
    env = {"SENDER": "aliyun", "URL": fake.url, "ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
           "ACCESS_KEY_SECRET": FAKE_ACCESS_KEY_SECRET, "SIGN_NAME": "某某水务", "LOGIN_TEMPLATE": "SMS_480001",
           "BINDING_TEMPLATE": "SMS_480002"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(f"SHUIWU_SMS_{name}", value)
        yield fake


@pytest.fixture(scope="module")
def api(database_url: str, sms: FakeGateway) -> Iterator[LiveServer]:
    with live_server(database_url, code_attempts_per_phone_per_day=CODE_ATTEMPTS_PER_DAY) as server:
        yield server


def last_code(fake: FakeGateway, phone: str) -> str:
    """The newest code the vendor was asked to text to ``phone``."""
    params = next(params for to, params in reversed(sent_codes(fake.requests())) if to == phone)
    return str(params["code"] if isinstance(params, dict) else params[0])


@dataclass(frozen=True, slots=True)
class DemoHousehold:
    id: int
    account_no: str
    name: str
    phone: str
    balance_fen: int
    mode: str


@pytest.fixture(scope="module")
async def households(database_url: str) -> list[DemoHousehold]:
    """Prepaid households of the demo with a registered phone and readings, each with a
    distinct phone, and a postpaid one last."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            found = (await connection.execute(text("""
                SELECT DISTINCT ON (h.phone) h.id, h.account_no, h.name, h.phone, a.balance_fen, a.mode
                FROM households h JOIN accounts a ON a.household_id = h.id AND a.status = 'open'
                WHERE h.phone IS NOT NULL
                  AND EXISTS (SELECT 1 FROM meter_assignments m WHERE m.household_id = h.id AND m.valid_to IS NULL)
                ORDER BY h.phone, h.id"""))).all()
    finally:
        await engine.dispose()
    return [DemoHousehold(*row) for row in found]


@pytest.fixture
async def resident_app(api: LiveServer) -> AsyncIterator[AppSession]:
    session = AppSession(api.url)
    yield session
    await session.close()
