"""Units are separated (issue 10, class 5), through GraphQL with a company administrator
and two district administrators (east and west):

- staff users, roles and operation-log entries belong to a unit and are seen and edited
  only within scope (out-of-scope ids are NOT_FOUND);
- shared catalogs (meter models) need whole-tree scope to change;
- the role hierarchy cannot be bent by a district administrator;
- a meter serves only households in its own area's subtree, and the readings screens
  never show a household outside the reader's scope even for an older row that breaks it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import openpyxl
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.archives.models import Household, Meter, MeterStatus, MeterType
from backend.archives.service import MeterChanges, create_meter
from backend.audit import http as audit_http
from backend.auth import service as auth
from backend.auth.catalog import all_permissions
from backend.auth.models import PrincipalKind, Role, RoleKind, StaffUser
from backend.clock import utcnow
from backend.db import session_factory
from backend.graphql.relay import encode_id
from backend.readings.service import ReadingIn, ingest_readings
from tests.factories import PASSWORD, ROOT, AreaTree, Staff, insert_legacy_assignment, make_area_tree, make_household, unique
from tests.graphql.client import GraphQLClient

STAFF_USERS = "query { staffUsers(first: 1000) { edges { node { username unit { name } } } } }"
ROLES = "query { roles(first: 1000) { edges { node { name parent { name } } } } }"
NODE = "query($id: ID!) { node(id: $id) { id } }"
AUDIT_LOGS = """
query($filter: AuditLogFilter) {
  auditLogs(first: 1000, filter: $filter) { totalCount edges { node { actorName action summary payload } } }
}
"""
UPDATE_HOUSEHOLD = """
mutation($id: ID!, $input: UpdateHouseholdInput!) { updateHousehold(id: $id, input: $input) { errors { code field } } }
"""
SET_PASSWORD = "mutation($id: ID!) { setStaffUserPassword(id: $id, password: \"N3w-passw0rd\") { errors { code field } } }"
UPDATE_USER = "mutation($id: ID!, $input: UpdateStaffUserInput!) { updateStaffUser(id: $id, input: $input) { errors { code field } } }"
DELETE_USER = "mutation($id: ID!) { deleteStaffUser(id: $id) { errors { code field } } }"
CREATE_ROLE = "mutation($input: RoleInput!) { createRole(input: $input) { role { name unit { name } } errors { code field } } }"
UPDATE_ROLE = "mutation($id: ID!, $input: UpdateRoleInput!) { updateRole(id: $id, input: $input) { role { name } errors { code field } } }"
DELETE_ROLE = "mutation($id: ID!) { deleteRole(id: $id) { errors { code field } } }"
SAVE_MODEL = """
mutation($input: MeterModelInput!, $id: ID) { saveMeterModel(input: $input, id: $id) { meterModel { id } errors { code field } } }
"""
DELETE_MODEL = "mutation($id: ID!) { deleteMeterModel(id: $id) { errors { code field } } }"
MODELS = "query { meterModels(first: 1000) { totalCount } }"
SET_RULE = "mutation($input: AlarmRuleInput!) { setAlarmRule(input: $input) { errors { code field } } }"
CREATE_USER = """
mutation($input: CreateStaffUserInput!) { createStaffUser(input: $input) { staffUser { unit { name } } errors { code field } } }
"""
ASSIGN = """
mutation($meterId: ID!, $householdId: ID!) {
  assignMeter(meterId: $meterId, householdId: $householdId) { errors { code field message messageEn } }
}
"""
UPDATE_METER = "mutation($id: ID!, $input: MeterInput!) { updateMeter(id: $id, input: $input) { errors { code field } } }"
MOVE_AREA = "mutation($id: ID!, $parentId: ID!) { moveArea(id: $id, parentId: $parentId) { errors { code field } } }"
REALTIME = """
query($code: String!) {
  realtimeReadings(filter: {meterCode: $code}, first: 10) { edges { node { meterCode householdName accountNo householdAddress } } }
}
"""
ALARMS = """
query($meterId: ID!) { meterAlarms(filter: {meterId: $meterId}) { edges { node { householdName accountNo } } } }
"""
HISTORY = """
query($filter: HistoryFilter!) { readingHistory(filter: $filter, first: 10) { edges { node { householdName accountNo } } } }
"""
LEDGER = """
query($scope: UsageObjectInput!, $from: Date!, $to: Date!) {
  usageLedger(scope: $scope, granularity: PERIOD, from: $from, to: $to) { rows { edges { node { householdName accountNo } } } }
}
"""
EXPORT_URL = "query($filters: JSON, $columns: [String!]) { readingsExportUrl(screen: realtime, filters: $filters, columns: $columns) }"


@dataclass
class Units:
    tree: AreaTree
    company_admin: Staff
    admin_role: Role
    east_admin: Staff
    east_role: Role
    west_admin: Staff
    west_clerk: StaffUser
    west_bare_role: Role
    east_cashier_role: Role  # the company's role for east cashiers, hung under 系统管理员
    east_household: Household
    west_household: Household
    east_meter: Meter
    legacy_meter: Meter
    tokens: dict[str, str] = field(default_factory=dict)


async def _staff_holding(session: AsyncSession, role: Role, unit_id: int | None) -> Staff:
    assert role.id is not None
    username = unique("unit")
    user = await auth.create_staff_user(session, actor=ROOT, username=username, full_name=unique("管理员"),
                                        password=PASSWORD, role_ids=[role.id], now=utcnow(), unit_id=unit_id)
    assert user.id is not None
    principal = await auth.load_principal(session, kind=PrincipalKind.staff, principal_id=user.id)
    assert principal is not None
    return Staff(user, principal, username, PASSWORD)


async def _meter(session: AsyncSession, area_id: int | None, code: str) -> Meter:
    return await create_meter(session, fields=MeterChanges(
        name=f"表{code}", code=code, address=f"{abs(hash(code)) % 10**14:014d}", meter_type=MeterType.cold_water,
        area_id=area_id, initial_reading=Decimal(0), status=MeterStatus.in_stock,
    ))


@pytest.fixture(scope="module")
def engine_for_module(committed_engine: AsyncEngine) -> AsyncEngine:
    return committed_engine


@pytest.fixture(scope="module")
async def units(engine_for_module: AsyncEngine) -> Units:
    """One company (the whole tree) with a 系统管理员 role; district administrator roles
    for east and west hang under it; a west clerk without roles and a west role without
    areas; an east meter at district level; an old east meter serving a west household."""
    async with session_factory(engine_for_module)() as session, session.begin():
        tree = await make_area_tree(session)
        admin_role = await auth.create_role(
            session, actor=ROOT, name=unique("系统管理员"), kind=RoleKind.system_admin, permissions=all_permissions(),
            area_ids=[tree.company.id or 0], unit_id=tree.company.id,
        )
        company_admin = await _staff_holding(session, admin_role, tree.company.id)
        district_roles = {}
        for area in (tree.east, tree.west):
            district_roles[area.name] = await auth.create_role(
                session, actor=ROOT, name=unique(f"{area.name}管理员"), kind=RoleKind.unit_admin,
                permissions=all_permissions(), area_ids=[area.id or 0], parent_id=admin_role.id, unit_id=area.id,
            )
        east_role, west_role = district_roles[tree.east.name], district_roles[tree.west.name]
        east_admin = await _staff_holding(session, east_role, tree.east.id)
        west_admin = await _staff_holding(session, west_role, tree.west.id)
        west_clerk = await auth.create_staff_user(session, actor=ROOT, username=unique("clerk"), full_name="西区文员",
                                                  password=PASSWORD, now=utcnow(), unit_id=tree.west.id)
        west_bare_role = await auth.create_role(session, actor=ROOT, name=unique("西区待定"), kind=RoleKind.operator,
                                                permissions={"readings:read"}, area_ids=[], unit_id=tree.west.id)
        east_cashier_role = await auth.create_role(
            session, actor=ROOT, name=unique("东区收费员"), kind=RoleKind.operator, permissions={"readings:read"},
            area_ids=[tree.east.id or 0], parent_id=admin_role.id, unit_id=tree.east.id,
        )
        east_household = await make_household(session, area=tree.east_community, name="张伟")
        west_household = await make_household(session, area=tree.west_community, name="李娜")
        east_meter = await _meter(session, tree.east.id, unique("UE"))
        legacy_meter = await _meter(session, tree.east_community.id, unique("UL"))
        assert legacy_meter.id is not None and west_household.id is not None
        await insert_legacy_assignment(session, meter_id=legacy_meter.id, household_id=west_household.id,
                                       valid_from=utcnow() - timedelta(days=3))
        read = await ingest_readings(session, readings=[ReadingIn(legacy_meter.id, utcnow() - timedelta(hours=2), Decimal(5))],
                                     source="test", now=utcnow())
        assert not read.rejected
        await session.execute(text(
            "INSERT INTO meter_alarms (meter_id, kind, opened_at, last_seen_at) VALUES (:id, 'silent', now(), now())"
        ), {"id": legacy_meter.id})
    return Units(tree, company_admin, admin_role, east_admin, east_role, west_admin, west_clerk, west_bare_role,
                 east_cashier_role, east_household, west_household, east_meter, legacy_meter)


async def _token(client: GraphQLClient, staff: Staff, units: Units) -> str:
    """One login per administrator for the module (argon2 is slow on purpose)."""
    if staff.username not in units.tokens:
        units.tokens[staff.username] = await client.login(staff.username, staff.password)
    return units.tokens[staff.username]


def _gid(type_name: str, pk: int | None) -> str:
    assert pk is not None
    return encode_id(type_name, pk)


async def _scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar_one()


def _errors(result: dict[str, Any], name: str) -> list[dict[str, Any]]:
    assert "errors" not in result, result["errors"]
    errors: list[dict[str, Any]] = result["data"][name]["errors"]
    return errors


# --------------------------------------------------------------------------- 1. lists by unit


async def test_the_operation_log_and_its_export_show_a_district_only_its_own_entries(
    client: GraphQLClient, units: Units
) -> None:
    since = utcnow().isoformat()
    east, west, company = [await _token(client, s, units) for s in (units.east_admin, units.west_admin, units.company_admin)]
    west_phone, east_phone = "13700000001", "13700000002"
    changed = await client.execute(UPDATE_HOUSEHOLD, {"id": _gid("Household", units.west_household.id),
                                                      "input": {"phone": west_phone}}, token=west)
    assert _errors(changed, "updateHousehold") == []
    changed = await client.execute(UPDATE_HOUSEHOLD, {"id": _gid("Household", units.east_household.id),
                                                      "input": {"phone": east_phone}}, token=east)
    assert _errors(changed, "updateHousehold") == []
    refused = await client.execute('mutation { login(username: "ghost-admin", password: "Wr0ngPassword") { errors { code } } }')
    assert refused["data"]["login"]["errors"] == [{"code": "INVALID_CREDENTIALS"}]

    seen_by_east = await client.execute(AUDIT_LOGS, {"filter": {"since": since}}, token=east)
    seen_by_company = await client.execute(AUDIT_LOGS, {"filter": {"since": since}}, token=company)

    east_text, company_text = str(seen_by_east["data"]), str(seen_by_company["data"])
    assert east_phone in east_text and west_phone not in east_text
    assert "ghost-admin" not in east_text and units.west_admin.user.full_name not in east_text
    assert {node["actorName"] for node in _nodes(seen_by_east)} == {units.east_admin.user.full_name}
    assert west_phone in company_text and east_phone in company_text and "ghost-admin" in company_text

    response = await client.http.get(audit_http.EXPORT_PATH, params={"since": since},
                                     headers={"Authorization": f"Bearer {east}"})
    assert response.status_code == 200, response.text
    rows = list(openpyxl.load_workbook(io.BytesIO(response.content)).active.iter_rows(values_only=True))  # type: ignore[union-attr]
    assert {row[0] for row in rows[2:]} == {units.east_admin.user.full_name}
    assert "ghost-admin" not in str(rows) and units.west_admin.user.full_name not in str(rows)


def _nodes(result: dict[str, Any]) -> list[dict[str, Any]]:
    assert "errors" not in result, result["errors"]
    return [edge["node"] for edge in result["data"]["auditLogs"]["edges"]]


async def test_the_staff_user_list_shows_a_district_only_its_own_users(client: GraphQLClient, units: Units) -> None:
    east, company = await _token(client, units.east_admin, units), await _token(client, units.company_admin, units)

    seen_by_east = await client.execute(STAFF_USERS, token=east)
    seen_by_company = await client.execute(STAFF_USERS, token=company)
    foreign = await client.execute(NODE, {"id": _gid("StaffUser", units.west_clerk.id)}, token=east)

    east_names = {edge["node"]["username"] for edge in seen_by_east["data"]["staffUsers"]["edges"]}
    company_names = {edge["node"]["username"] for edge in seen_by_company["data"]["staffUsers"]["edges"]}
    assert east_names == {units.east_admin.username}
    assert {units.east_admin.username, units.west_admin.username, units.west_clerk.username,
            units.company_admin.username} <= company_names
    assert [error["extensions"]["code"] for error in foreign["errors"]] == ["NOT_FOUND"]


async def test_the_role_list_shows_a_district_only_its_own_roles(client: GraphQLClient, units: Units) -> None:
    east, company = await _token(client, units.east_admin, units), await _token(client, units.company_admin, units)

    seen_by_east = await client.execute(ROLES, token=east)
    seen_by_company = await client.execute(ROLES, token=company)
    foreign = await client.execute(NODE, {"id": _gid("Role", units.admin_role.id)}, token=east)

    east_roles = {edge["node"]["name"]: edge["node"]["parent"] for edge in seen_by_east["data"]["roles"]["edges"]}
    company_roles = {edge["node"]["name"]: edge["node"]["parent"] for edge in seen_by_company["data"]["roles"]["edges"]}
    east_names, company_names = set(east_roles), set(company_roles)
    # Their own role's parent is 系统管理员: outside their scope, so not shown.
    assert east_roles[units.east_role.name] is None
    assert company_roles[units.east_role.name] == {"name": units.admin_role.name}
    assert not east_names & {units.admin_role.name, units.west_bare_role.name}
    assert {units.admin_role.name, units.east_role.name, units.west_bare_role.name} <= company_names
    assert [error["extensions"]["code"] for error in foreign["errors"]] == ["NOT_FOUND"]


async def test_a_new_user_belongs_to_the_creators_district_unless_placed_within_it(
    client: GraphQLClient, units: Units, engine_for_module: AsyncEngine
) -> None:
    east = await _token(client, units.east_admin, units)
    users_before = await _scalar(engine_for_module, "SELECT count(*) FROM staff_users")
    new_user = {"fullName": "新抄表员", "password": "Str0ng-enough"}

    default = await client.execute(CREATE_USER, {"input": {**new_user, "username": unique("reader")}}, token=east)
    placed = await client.execute(CREATE_USER, {"input": {**new_user, "username": unique("reader"),
                                                          "unitId": _gid("Area", units.tree.east_community.id)}}, token=east)
    foreign = await client.execute(CREATE_USER, {"input": {**new_user, "username": unique("reader"),
                                                           "unitId": _gid("Area", units.tree.west.id)}}, token=east)

    assert default["data"]["createStaffUser"]["staffUser"]["unit"] == {"name": units.tree.east.name}
    assert placed["data"]["createStaffUser"]["staffUser"]["unit"] == {"name": units.tree.east_community.name}
    assert _errors(foreign, "createStaffUser") == [{"code": "UNKNOWN_AREA", "field": "unitId"}]
    assert await _scalar(engine_for_module, "SELECT count(*) FROM staff_users") == users_before + 2


# --------------------------------------------------------------------------- 2. edits by unit


async def test_a_user_without_roles_and_a_role_without_areas_are_edited_only_within_their_unit(
    client: GraphQLClient, units: Units, engine_for_module: AsyncEngine
) -> None:
    east, west = await _token(client, units.east_admin, units), await _token(client, units.west_admin, units)
    clerk, bare = _gid("StaffUser", units.west_clerk.id), _gid("Role", units.west_bare_role.id)
    password_before = await _scalar(engine_for_module, "SELECT password_hash FROM staff_users WHERE id = :id",
                                    id=units.west_clerk.id)
    attempts = [
        ("setStaffUserPassword", SET_PASSWORD, {"id": clerk}),
        ("updateStaffUser", UPDATE_USER, {"id": clerk, "input": {"fullName": "改名", "roleIds": [_gid("Role", units.east_role.id)]}}),
        ("deleteStaffUser", DELETE_USER, {"id": clerk}),
        ("updateRole", UPDATE_ROLE, {"id": bare, "input": {"name": "东区接管", "areaIds": [_gid("Area", units.tree.east.id)]}}),
        ("deleteRole", DELETE_ROLE, {"id": bare}),
    ]

    for name, document, variables in attempts:
        result = await client.execute(document, variables, token=east)
        assert _errors(result, name) == [{"code": "NOT_FOUND", "field": "id"}], name

    clerk_now = await _scalar(engine_for_module, "SELECT row(full_name, password_hash, "
                              "(SELECT count(*) FROM staff_user_roles WHERE user_id = :id))::text "
                              "FROM staff_users WHERE id = :id", id=units.west_clerk.id)
    assert clerk_now == f'(西区文员,"{password_before}",0)'
    role_now = await _scalar(engine_for_module, "SELECT row(name, (SELECT count(*) FROM role_areas WHERE role_id = :id))::text "
                             "FROM roles WHERE id = :id", id=units.west_bare_role.id)
    assert role_now == f"({units.west_bare_role.name},0)"
    # Its own unit's administrator still may.
    renamed = await client.execute(UPDATE_ROLE, {"id": bare, "input": {"description": "西区"}}, token=west)
    assert _errors(renamed, "updateRole") == []


# --------------------------------------------------------------------------- 3. shared catalogs


async def test_the_meter_model_catalog_is_read_by_districts_and_changed_only_with_the_whole_tree(
    client: GraphQLClient, units: Units, engine_for_module: AsyncEngine
) -> None:
    east, company = await _token(client, units.east_admin, units), await _token(client, units.company_admin, units)
    model = {"vendor": "宁波水表", "name": unique("LXS-"), "caliber": 20}

    refused = await client.execute(SAVE_MODEL, {"input": model}, token=east)
    models_before = await _scalar(engine_for_module, "SELECT count(*) FROM meter_models")
    created = await client.execute(SAVE_MODEL, {"input": model}, token=company)
    model_id = created["data"]["saveMeterModel"]["meterModel"]["id"]
    edit = await client.execute(SAVE_MODEL, {"input": {**model, "caliber": 25}, "id": model_id}, token=east)
    delete = await client.execute(DELETE_MODEL, {"id": model_id}, token=east)
    read = await client.execute(MODELS, token=east)

    whole_tree = [{"code": "WHOLE_TREE_REQUIRED", "field": None}]
    assert _errors(refused, "saveMeterModel") == whole_tree
    assert _errors(created, "saveMeterModel") == []
    assert _errors(edit, "saveMeterModel") == whole_tree and _errors(delete, "deleteMeterModel") == whole_tree
    assert await _scalar(engine_for_module, "SELECT count(*) FROM meter_models") == models_before + 1
    assert await _scalar(engine_for_module, "SELECT caliber FROM meter_models WHERE name = :name", name=model["name"]) == 20
    assert read["data"]["meterModels"]["totalCount"] == models_before + 1


async def test_rules_beyond_one_area_are_set_with_a_scope_over_the_company_root(client: GraphQLClient, units: Units) -> None:
    east, company = await _token(client, units.east_admin, units), await _token(client, units.company_admin, units)
    rule = {"kind": "silent", "threshold": "48"}

    refused = await client.execute(SET_RULE, {"input": rule}, token=east)
    accepted = await client.execute(SET_RULE, {"input": rule}, token=company)

    assert _errors(refused, "setAlarmRule") == [{"code": "UNKNOWN_AREA", "field": "areaId"}]
    assert _errors(accepted, "setAlarmRule") == []


# --------------------------------------------------------------------------- 4. the hierarchy


async def test_a_district_administrator_cannot_bend_the_role_hierarchy(
    client: GraphQLClient, units: Units, engine_for_module: AsyncEngine
) -> None:
    east = await _token(client, units.east_admin, units)
    own = _gid("Role", units.east_role.id)
    roles_before = await _scalar(engine_for_module, "SELECT count(*) FROM roles")
    under = {"name": unique("抄表员"), "kind": "operator", "permissions": ["readings:read"],
             "areaIds": [_gid("Area", units.tree.east_community.id)]}

    under_admin = await client.execute(CREATE_ROLE, {"input": {**under, "parentId": _gid("Role", units.admin_role.id)}}, token=east)
    detached = await client.execute(UPDATE_ROLE, {"id": own, "input": {"clearParent": True}}, token=east)
    widened = await client.execute(UPDATE_ROLE, {"id": own, "input": {"permissions": ["readings:read"]}}, token=east)
    reparented = await client.execute(UPDATE_ROLE, {"id": own, "input": {"parentId": _gid("Role", units.west_bare_role.id)}},
                                      token=east)

    assert _errors(under_admin, "createRole") == [{"code": "NOT_FOUND", "field": "parentId"}]
    own_role = [{"code": "ROLE_HIERARCHY", "field": "id"}]
    assert _errors(detached, "updateRole") == own_role
    assert _errors(widened, "updateRole") == own_role
    assert _errors(reparented, "updateRole") == own_role
    assert await _scalar(engine_for_module, "SELECT count(*) FROM roles") == roles_before
    assert await _scalar(engine_for_module, "SELECT parent_id FROM roles WHERE id = :id", id=units.east_role.id) == units.admin_role.id
    # A role of their unit that the company hung under 系统管理员: theirs to describe, not to detach.
    cashier = _gid("Role", units.east_cashier_role.id)
    described = await client.execute(UPDATE_ROLE, {"id": cashier, "input": {"description": "柜台"}}, token=east)
    cut_loose = await client.execute(UPDATE_ROLE, {"id": cashier, "input": {"clearParent": True}}, token=east)
    assert _errors(described, "updateRole") == []
    assert _errors(cut_loose, "updateRole") == [{"code": "ROLE_HIERARCHY", "field": "parentId"}]
    assert await _scalar(engine_for_module, "SELECT parent_id FROM roles WHERE id = :id",
                         id=units.east_cashier_role.id) == units.admin_role.id
    # Under their own role, within it, is how a district adds roles; the new one is theirs.
    below = await client.execute(CREATE_ROLE, {"input": {**under, "parentId": own}}, token=east)
    assert _errors(below, "createRole") == []
    assert below["data"]["createRole"]["role"]["unit"] == {"name": units.tree.east.name}


# --------------------------------------------------------------------------- 5. cross-area households


async def test_a_meter_serves_only_households_within_its_area(
    client: GraphQLClient, units: Units, engine_for_module: AsyncEngine
) -> None:
    company = await _token(client, units.company_admin, units)
    meter = _gid("Meter", units.east_meter.id)
    assignments = "SELECT count(*) FROM meter_assignments WHERE meter_id = :id"

    across = await client.execute(ASSIGN, {"meterId": meter, "householdId": _gid("Household", units.west_household.id)},
                                  token=company)
    assert _errors(across, "assignMeter") == [{
        "code": "CROSS_AREA_ASSIGNMENT", "field": "householdId", "message": "水表只能服务其所在区域 (含下级区域) 内的住户",
        "messageEn": "A meter may serve only a household in the meter's own area or an area below it",
    }]
    assert await _scalar(engine_for_module, assignments, id=units.east_meter.id) == 0

    below = await client.execute(ASSIGN, {"meterId": meter, "householdId": _gid("Household", units.east_household.id)},
                                 token=company)
    assert _errors(below, "assignMeter") == []
    # Once assigned, neither side moves out of the rule, nor does the area holding one.
    household_moved = await client.execute(UPDATE_HOUSEHOLD, {
        "id": _gid("Household", units.east_household.id), "input": {"areaId": _gid("Area", units.tree.west_community.id)}},
        token=company)
    meter_moved = await client.execute(UPDATE_METER, {
        "id": meter, "input": {"areaId": _gid("Area", units.tree.west.id)}}, token=company)
    area_moved = await client.execute(MOVE_AREA, {
        "id": _gid("Area", units.tree.east_community.id), "parentId": _gid("Area", units.tree.west.id)}, token=company)
    assert _errors(household_moved, "updateHousehold") == [{"code": "CROSS_AREA_ASSIGNMENT", "field": "areaId"}]
    assert _errors(meter_moved, "updateMeter") == [{"code": "CROSS_AREA_ASSIGNMENT", "field": "areaId"}]
    assert _errors(area_moved, "moveArea") == [{"code": "CROSS_AREA_ASSIGNMENT", "field": "parentId"}]
    assert await _scalar(engine_for_module, "SELECT a.path FROM households h JOIN areas a ON a.id = h.area_id "
                                            "WHERE h.id = :id", id=units.east_household.id) == units.tree.east_community.path


async def test_readings_screens_and_exports_mask_an_out_of_scope_household_of_an_older_row(
    client: GraphQLClient, units: Units
) -> None:
    east, company = await _token(client, units.east_admin, units), await _token(client, units.company_admin, units)
    code = units.legacy_meter.code
    masked = {"meterCode": code, "householdName": None, "accountNo": None, "householdAddress": None}

    seen_by_east = await client.execute(REALTIME, {"code": code}, token=east)
    seen_by_company = await client.execute(REALTIME, {"code": code}, token=company)
    url = (await client.execute(EXPORT_URL, {"filters": {"meterCode": code},
                                             "columns": ["meter_code", "account_no", "household_name", "household_address"]},
                                token=east))["data"]["readingsExportUrl"]
    exported = openpyxl.load_workbook(io.BytesIO((await client.http.get(url)).content)).active

    now = utcnow()
    window = {"from": (now - timedelta(days=1)).isoformat(), "to": now.isoformat(), "meterIds": [_gid("Meter", units.legacy_meter.id)]}
    history = await client.execute(HISTORY, {"filter": window}, token=east)
    days = {"scope": {"meterId": _gid("Meter", units.legacy_meter.id)}, "from": str((now - timedelta(days=1)).date()),
            "to": str((now + timedelta(days=1)).date())}
    ledger = await client.execute(LEDGER, days, token=east)
    ledger_for_company = await client.execute(LEDGER, days, token=company)
    alarms = await client.execute(ALARMS, {"meterId": _gid("Meter", units.legacy_meter.id)}, token=east)
    assert [edge["node"] for edge in seen_by_east["data"]["realtimeReadings"]["edges"]] == [masked]
    assert [edge["node"] for edge in history["data"]["readingHistory"]["edges"]] == [{"householdName": None, "accountNo": None}]
    assert [edge["node"] for edge in ledger["data"]["usageLedger"]["rows"]["edges"]] == [{"householdName": None, "accountNo": None}]
    assert [edge["node"]["householdName"] for edge in ledger_for_company["data"]["usageLedger"]["rows"]["edges"]] == ["李娜"]
    assert [edge["node"] for edge in alarms["data"]["meterAlarms"]["edges"]] == [{"householdName": None, "accountNo": None}]
    assert [edge["node"]["householdName"] for edge in seen_by_company["data"]["realtimeReadings"]["edges"]] == ["李娜"]
    assert list(exported.iter_rows(values_only=True))[2:] == [(code, None, None, None)]  # type: ignore[union-attr]
