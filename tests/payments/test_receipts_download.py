"""A receipt's download link: reusable for its half hour, and checked again at every
download: a caller who lost receipts:print is refused (403), and one whose data scope no
longer holds the payment (404), however fresh the link."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives.models import Area
from backend.db import session_factory
from backend.graphql.relay import encode_id
from backend.payments.counter import Operator, take_payment
from backend.payments.models import PaymentChannel, PaymentPurpose
from tests.billing.factories import at, served_household, tariff
from tests.factories import Staff, make_staff
from tests.graphql.client import GraphQLClient, graphql_client

PRINT = "mutation($id: ID!) { printReceipt(paymentId: $id) { url errors { field code } } }"


@dataclass
class World:
    cashier: Staff
    payment: str
    role_id: int
    area_id: int


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    async with session_factory(committed_engine)() as session, session.begin():
        served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
        area = await session.get(Area, served.household.area_id)
        assert area is not None and area.id is not None
        cashier = await make_staff(session, permissions={"counter:collect", "receipts:print"}, areas=[area])
        assert cashier.user.id is not None
        payment = await take_payment(session, account_id=served.account_id, channel=PaymentChannel.cash,
                                     purpose=PaymentPurpose.recharge, amount_fen=500, confirm_amount_fen=500,
                                     idempotency_key="receipt-download", operator=Operator(cashier.user.id, "x"),
                                     now=at(2026, 11, 20, 9))
        assert payment.id is not None
        role_id = (await session.execute(text("SELECT role_id FROM staff_user_roles WHERE user_id = :u"),
                                         {"u": cashier.user.id})).scalar_one()
    return World(cashier, encode_id("Payment", payment.id), int(role_id), area.id)


@pytest.fixture(scope="module")
async def client(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GraphQLClient]:
    data_dir: Path = tmp_path_factory.mktemp("receipt-download")
    async with graphql_client(database_url, data_dir=data_dir) as api:
        yield api


async def test_a_receipt_link_checks_permission_and_scope_at_every_download(
        client: GraphQLClient, world: World, committed_engine: AsyncEngine) -> None:
    token = await client.login(world.cashier.username, world.cashier.password)
    printed = await client.execute(PRINT, {"id": world.payment}, token=token)
    url = printed["data"]["printReceipt"]["url"]
    assert url.startswith("/receipts/") and "payments=" in url, url

    statuses = [(await client.http.get(url)).status_code, (await client.http.get(url)).status_code]  # reusable
    async with committed_engine.begin() as connection:
        await connection.execute(text("DELETE FROM role_permissions WHERE role_id = :r AND permission = 'receipts:print'"),
                                 {"r": world.role_id})
    statuses.append((await client.http.get(url)).status_code)
    async with committed_engine.begin() as connection:
        await connection.execute(text("INSERT INTO role_permissions (role_id, permission) VALUES (:r, 'receipts:print')"),
                                 {"r": world.role_id})
        await connection.execute(text("DELETE FROM role_areas WHERE role_id = :r"), {"r": world.role_id})
    statuses.append((await client.http.get(url)).status_code)
    async with committed_engine.begin() as connection:
        await connection.execute(text("INSERT INTO role_areas (role_id, area_id) VALUES (:r, :a)"),
                                 {"r": world.role_id, "a": world.area_id})
    again = await client.http.get(url)
    forged = await client.http.get(url.replace("payments=", "payments=1%2C"))

    assert statuses == [200, 200, 403, 404]
    assert again.status_code == 200 and again.headers["content-type"] == "application/pdf"
    assert forged.status_code == 401
