"""Binding a household over the API: what the bill prints is not enough. The README's
resident steps (requestLoginCode, residentLogin, bindHousehold) plus the proof."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.auth.sms import sms_sender
from backend.db import session_factory
from tests.factories import make_household
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

SEND_CODE = "mutation($phone: String!) { requestLoginCode(phone: $phone) { errors { code } } }"
LOGIN = "mutation($phone: String!, $code: String!) { residentLogin(phone: $phone, code: $code) { tokens { accessToken } errors { code } } }"
BIND = """mutation($no: String!, $name: String!) { bindHousehold(accountNo: $no, name: $name) {
  household { accountNo } binding { id state codeSentTo residentPhone } errors { code } } }"""
CONFIRM = """mutation($id: ID!, $code: String!) { confirmHouseholdBinding(id: $id, code: $code) {
  household { accountNo } binding { state } errors { code field } } }"""
REQUESTS = "{ viewer { bindingRequests { id accountNo residentPhone state } households { accountNo } } }"
DECIDE = "mutation($id: ID!) { decideHouseholdBinding(id: $id, approve: true) { binding { state } errors { code } } }"
COUNTER = "{ householdBindingRequests(first: 10) { totalCount edges { node { id accountNo } } } }"
AT_COUNTER = "mutation($id: ID!) { decideHouseholdBindingAtCounter(id: $id, approve: false) { binding { state } errors { code } } }"


async def resident_token(client: GraphQLClient, phone: str) -> str:
    assert (await client.execute(SEND_CODE, {"phone": phone}))["data"]["requestLoginCode"]["errors"] == []
    code = next(code for to, code in reversed(sms_sender("log").sent) if to == phone)
    answer = await client.execute(LOGIN, {"phone": phone, "code": code})
    token: str = answer["data"]["residentLogin"]["tokens"]["accessToken"]
    return token


async def test_a_tenant_binds_with_the_code_from_the_registered_phone_or_the_owners_approval(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    async with session_factory(engine_for_module)() as session, session.begin():
        household = await make_household(session, area=world.tree.east_community, name="王芳", phone="13600000001")
    owner = await resident_token(client, "13600000001")
    tenant = await resident_token(client, "13600000002")
    family = await resident_token(client, "13600000003")
    bill = {"no": household.account_no, "name": "王芳"}

    owned = await client.execute(BIND, bill, token=owner)
    by_code = await client.execute(BIND, bill, token=family)
    code = next(code for to, code in reversed(sms_sender("log").sent) if to == "13600000001")
    confirmed = await client.execute(CONFIRM, {"id": by_code["data"]["bindHousehold"]["binding"]["id"], "code": code}, token=family)
    asked = await client.execute(BIND, bill, token=tenant)
    seen_by_owner = await client.execute(REQUESTS, token=owner)
    tenant_before = await client.execute(REQUESTS, token=tenant)
    approved = await client.execute(DECIDE, {"id": asked["data"]["bindHousehold"]["binding"]["id"]}, token=owner)
    tenant_after = await client.execute(REQUESTS, token=tenant)

    assert owned["data"]["bindHousehold"]["household"] == {"accountNo": household.account_no}
    assert owned["data"]["bindHousehold"]["binding"]["state"] == "active"
    assert by_code["data"]["bindHousehold"]["household"] is None
    assert by_code["data"]["bindHousehold"]["binding"]["state"] == "pending"
    assert by_code["data"]["bindHousehold"]["binding"]["codeSentTo"] == "136****0001"
    assert confirmed["data"]["confirmHouseholdBinding"]["household"] == {"accountNo": household.account_no}
    assert [(r["accountNo"], r["residentPhone"]) for r in seen_by_owner["data"]["viewer"]["bindingRequests"]] == [
        (household.account_no, "136****0002"),
    ]
    assert tenant_before["data"]["viewer"]["households"] == []
    assert approved["data"]["decideHouseholdBinding"] == {"binding": {"state": "active"}, "errors": []}
    assert tenant_after["data"]["viewer"]["households"] == [{"accountNo": household.account_no}]
    async with engine_for_module.connect() as connection:
        states = (await connection.execute(text(
            "SELECT payload->>'state' FROM domain_events WHERE kind = 'household.bound' AND key = :key ORDER BY id"
        ), {"key": f"household:{household.id}"})).scalars().all()
    assert states == ["active", "pending", "active", "pending", "active"]


async def test_the_counter_sees_and_decides_only_requests_in_its_scope(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    async with session_factory(engine_for_module)() as session, session.begin():
        household = await make_household(session, area=world.tree.west_community, name="赵强")
    tenant = await resident_token(client, "13600000004")
    asked = await client.execute(BIND, {"no": household.account_no, "name": "赵强"}, token=tenant)
    binding_id = asked["data"]["bindHousehold"]["binding"]["id"]
    admin = await client.login(world.admin.username, world.admin.password)

    listed = await client.execute(COUNTER, token=admin)
    rejected = await client.execute(AT_COUNTER, {"id": binding_id}, token=admin)
    again = await client.execute(AT_COUNTER, {"id": binding_id}, token=admin)

    assert asked["data"]["bindHousehold"]["binding"]["codeSentTo"] is None
    assert binding_id in [edge["node"]["id"] for edge in listed["data"]["householdBindingRequests"]["edges"]]
    assert rejected["data"]["decideHouseholdBindingAtCounter"] == {"binding": {"state": "rejected"}, "errors": []}
    assert again["data"]["decideHouseholdBindingAtCounter"]["errors"] == [{"code": "NOT_FOUND"}]
    assert (await client.execute(REQUESTS, token=tenant))["data"]["viewer"]["households"] == []
