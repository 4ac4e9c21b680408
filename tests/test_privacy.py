"""Residents' data rights (PIPL): the export holds everything the domains declare about a
phone and nobody else's; erasure removes the identity and keeps the households, meters,
readings and their counts; every personal-looking column is accounted for."""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel, col

import backend.all_models  # noqa: F401  (the whole metadata)
from backend import privacy
from backend.archives.models import Household, HouseholdStatus
from backend.archives.service import LANDLINE, MOBILE, assign_meter, create_household, set_household_status, transfer_ownership
from backend.audit.service import masked_id_number, record_operation
from backend.auth import service as auth
from backend.auth.models import AuthSession, BindingState, HouseholdBinding
from backend.auth.principal import Principal
from backend.domain import Domain
from backend.domains import installed
from backend.errors import DomainError, ErrorCode
from backend.graphql.relay import encode_id
from backend.notifications.kinds import MessageKind, Recipient
from backend.notifications.models import DevicePlatform, UserKind
from backend.notifications.service import InboxUser, notify_many, register_device
from backend.privacy import Erasure, UnknownPhone, erase_personal_data, export_personal_data, subject_token
from backend.readings.models import ReadingQuality
from backend.readings.service import ReadingIn, ingest_readings
from backend.workorders.models import WorkOrderCategory
from backend.workorders.photos import StoredPhoto
from backend.workorders.service import create_work_order
from tests.auth.support import POLICY, FakeSms
from tests.factories import ROOT, bind_at_counter, make_area_tree, unique
from tests.readings.factories import make_meter

PHONE = "13800001111"
SECRET = "privacy-test-secret-of-at-least-32-chars"
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
ID_NUMBER = "330102199001011234"
ADDRESS = "翠湖小区 3 幢 2 单元 501"
# Other people in the scenario: none of this may reach the export, and erasure leaves it.
OTHERS = ("赵六", "13600004444", "李强", "13700003333", "孙七", "13500005555")

# Column names that look like they hold something about a person. A new column matching
# one must be declared by its domain (Domain.personal_data: held or excluded, with why).
PERSONAL_LOOKING = re.compile(
    r"phone|mobile|name|id_number|id_card|address|email|user_agent|^ip$|location|contact|payload|request|response"
    r"|_by$|owner|username|summary|reason"
)


def _tables_of(domain: Domain) -> set[str]:
    names: set[str] = set()
    for module_name in domain.models:
        module = importlib.import_module(module_name)
        names |= {value.__tablename__ for value in vars(module).values()
                  if isinstance(value, type) and issubclass(value, SQLModel) and hasattr(value, "__table__")
                  and value.__module__ == module_name}
    return names


def test_every_personal_looking_column_is_held_or_excluded_by_the_domain_owning_its_table() -> None:
    undeclared, stale = [], []
    for domain in installed():
        declared = domain.personal_data
        held = dict(declared.held) if declared else {}
        excluded = dict(declared.excluded) if declared else {}
        tables = _tables_of(domain)
        for table_name in sorted(tables):
            for column in SQLModel.metadata.tables[table_name].columns:
                key = f"{table_name}.{column.name}"
                if PERSONAL_LOOKING.search(column.name) and key not in held and key not in excluded:
                    undeclared.append(f"{domain.name}: {key}")
        for key in (*held, *excluded):
            table_name, _, column_name = key.partition(".")
            if table_name not in tables or column_name not in SQLModel.metadata.tables[table_name].columns:
                stale.append(f"{domain.name}: {key}")
        assert all(reason.strip() for reason in (*held.values(), *excluded.values())), domain.name
        assert not set(held) & set(excluded), domain.name
    assert undeclared == [], "declare these in Domain.personal_data (held or excluded, with why)"
    assert stale == []


@dataclass
class Scenario:
    resident: Principal
    session_id: object
    access_token: str
    owned: Household  # theirs now
    contact: Household  # another owner's, listing their phone as phone2
    sold: Household  # theirs until 2025-06-01, then 赵六's
    pending: Household  # 孙七's, which they asked to bind
    readings_theirs: list[str]  # read_at of the readings the export must hold


async def _reading(session: AsyncSession, meter_id: int, at: datetime, total: str) -> None:
    result = await ingest_readings(session, readings=[ReadingIn(meter_id=meter_id, read_at=at, total_m3=Decimal(total),
                                                                quality=ReadingQuality.actual)], source="test", now=NOW)
    assert result.inserted == 1


async def resident_with_everything(session: AsyncSession) -> Scenario:
    """A resident who signed in, owns one household, is the second phone of another, sold
    a third, bound the first, asked for a fourth, once gave a wrong name, and shows up in
    the log."""
    tree = await make_area_tree(session)
    owned = await create_household(session, account_no=unique("88"), name="王芳", area_id=tree.east_community.id,
                                   phone=PHONE, phone2="13900002222", id_number=ID_NUMBER, address=ADDRESS,
                                   owner_since=date(2025, 1, 1))
    meter = await make_meter(session, area_id=tree.east.id)
    await assign_meter(session, meter_id=meter.id, household_id=owned.id, valid_from=datetime(2025, 1, 1, tzinfo=UTC),
                       start_reading=Decimal(0), now=NOW)
    await _reading(session, meter.id, datetime(2026, 11, 1, tzinfo=UTC), "12.5")
    await _reading(session, meter.id, datetime(2026, 11, 20, tzinfo=UTC), "19.25")
    await set_household_status(session, household_id=owned.id, status=HouseholdStatus.suspended, reason="欠费停水",
                               changed_by="收费员", now=NOW)
    contact = await create_household(session, account_no=unique("88"), name="李强", area_id=tree.east_community.id,
                                     phone="13700003333", phone2=PHONE)
    sold = await create_household(session, account_no=unique("88"), name="王芳", area_id=tree.west_community.id,
                                  phone=PHONE, owner_since=date(2024, 1, 1))
    old_meter = await make_meter(session, area_id=tree.west.id, install_date=date(2023, 1, 1))
    await assign_meter(session, meter_id=old_meter.id, household_id=sold.id,
                       valid_from=datetime(2024, 1, 1, tzinfo=UTC), start_reading=Decimal(100), now=NOW)
    await _reading(session, old_meter.id, datetime(2025, 3, 1, tzinfo=UTC), "150")
    await transfer_ownership(session, household_id=sold.id, name="赵六", phone="13600004444", id_number=None,
                             valid_from=date(2025, 6, 1))
    await _reading(session, old_meter.id, datetime(2025, 9, 1, tzinfo=UTC), "190")  # 赵六's water
    pending = await create_household(session, account_no=unique("88"), name="孙七", area_id=tree.east_community.id,
                                     phone="13500005555")

    sms = FakeSms()
    await auth.claim_code_send(session, phone=PHONE, now=NOW, policy=POLICY, ip="203.0.113.7")
    await auth.request_login_code(session, phone=PHONE, now=NOW, policy=POLICY, sender=sms)
    await auth.claim_code_attempt(session, phone=PHONE, now=NOW, policy=POLICY, ip="203.0.113.7")
    pair = await auth.login_resident(session, phone=PHONE, code=sms.last_code, now=NOW, policy=POLICY,
                                     ip="203.0.113.7", user_agent="水务 App/2.1")
    resident = pair.principal
    await bind_at_counter(session, resident=resident, household=owned)
    # A balance alert reached them (inbox) and, before they installed the app, their phone by SMS.
    await notify_many(session, kind=MessageKind.BALANCE_ALERT, recipients=[Recipient.household(owned.id)],
                      title="余额不足提醒", body="余额不足", dedupe_key="privacy:balance", now=NOW)
    await session.execute(text("UPDATE sms_deliveries SET state = 'sent', phone = :phone, sent_at = :now "
                               "WHERE household_id = :h"), {"phone": PHONE, "now": NOW, "h": owned.id})
    await register_device(session, user=InboxUser(UserKind.resident, resident.id), registration_id="rid-privacy",
                          platform=DevicePlatform.android, now=NOW)
    await auth.bind_household(session, resident=resident, account_no=pending.account_no, name="孙七", now=NOW, policy=POLICY)
    # A repair request with a photo (work orders: description, contact, photos are theirs).
    await create_work_order(session, principal=replace(resident, household_ids=(owned.id,)), household_id=owned.id,
                            category=WorkOrderCategory.leak, description="厨房水管漏水", contact_name=None,
                            contact_phone=None, appointment_at=None, now=NOW, tz=ZoneInfo("Asia/Shanghai"),
                            photos=[StoredPhoto("photos/2026/12/01/a.jpg", "photos/2026/12/01/a-thumb.jpg", None)])
    # An attempt with a wrong name: counted against their binding lockout.
    await auth.claim_bind_attempt(session, resident=resident, now=NOW, policy=POLICY, ip="203.0.113.7")

    await record_operation(session, at=NOW, actor=resident, module="resident", action="residentLogin",
                           summary=f"住户 {PHONE} 登录 成功", payload={"phone": PHONE}, success=True,
                           ip="203.0.113.7", request_id=None)
    await record_operation(session, at=NOW, actor=ROOT, module="archives", action="updateHousehold",
                           summary=f"修改住户 {owned.account_no} 王芳", payload={"name": "王芳", "phone": PHONE},
                           success=True, ip="198.51.100.2", request_id=None)
    await record_operation(session, at=NOW, actor=ROOT, module="archives", action="transferOwnership",
                           summary="过户给 赵六 13600004444", payload={"phone": "13600004444"}, success=True,
                           ip="198.51.100.2", request_id=None)
    theirs = ["2025-01-01T00:00:00+00:00", "2026-11-01T00:00:00+00:00", "2026-11-20T00:00:00+00:00",
              "2024-01-01T00:00:00+00:00", "2025-03-01T00:00:00+00:00"]
    assert pair.principal.session_id is not None
    return Scenario(resident, pair.principal.session_id, pair.access_token, owned, contact, sold, pending, theirs)


async def export(session: AsyncSession, phone: str = PHONE) -> dict[str, Any]:
    return await export_personal_data(session, phone=phone, secret=SECRET, now=NOW, timezone="Asia/Shanghai",
                                      domains=installed(), operator="系统 (测试)")


async def erase(session: AsyncSession, phone: str = PHONE) -> Erasure:
    return await erase_personal_data(session, phone=phone, secret=SECRET, now=NOW + timedelta(hours=1),
                                     timezone="Asia/Shanghai", domains=installed(), operator="系统 (测试)")


async def test_the_export_holds_every_declared_column_of_the_resident_and_nobody_elses(session: AsyncSession) -> None:
    scenario = await resident_with_everything(session)

    document = await export(session)

    sections = document["sections"]
    for domain in installed():
        for key in (domain.personal_data.held if domain.personal_data else {}):
            table_name, _, column_name = key.partition(".")
            assert sections[table_name]["rows"], key
            assert all(column_name in row for row in sections[table_name]["rows"]), key
    assert [row["account_no"] for row in sections["households"]["rows"]] == [
        scenario.owned.account_no, scenario.contact.account_no]
    assert [(row["account_no"], row["valid_to"]) for row in sections["household_owners"]["rows"]] == [
        (scenario.owned.account_no, None), (scenario.sold.account_no, "2025-06-01")]
    assert sorted(row["read_at"] for row in sections["readings"]["rows"]) == sorted(scenario.readings_theirs)
    assert [row["state"] for row in sections["household_bindings"]["rows"]] == ["active", "pending"]
    assert [(row["ip"], row["user_agent"]) for row in sections["auth_sessions"]["rows"]] == [
        ("203.0.113.7", "水务 App/2.1")]
    assert [row["action"] for row in sections["audit_log"]["rows"]] == ["residentLogin", "updateHousehold"]
    assert document["format"] == "shuiwu.personal-data/1" and document["phone"] == PHONE
    dumped = json.dumps(document, ensure_ascii=False)
    assert [other for other in OTHERS if other in dumped] == []
    assert "code_hash" not in dumped and "refresh_hash" not in dumped


async def test_an_export_is_logged_as_the_system_without_its_content(session: AsyncSession) -> None:
    await resident_with_everything(session)

    await export(session)

    entry = (await session.execute(text(
        "SELECT actor_kind, actor_name, module, action, summary, payload::text FROM audit_log "
        "WHERE action = 'exportPersonalData'"))).one()
    assert entry[:4] == ("system", "系统 (测试)", "privacy", "exportPersonalData")
    assert entry.summary.startswith("导出 138****1111 的个人信息")
    assert PHONE not in entry.summary + entry.payload and "王芳" not in entry.payload


async def _counts(session: AsyncSession) -> dict[str, int]:
    tables = ("households", "household_owners", "household_status_history", "meters", "meter_assignments",
              "readings", "residents", "auth_sessions", "areas")
    return {table: (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one() for table in tables}


async def _rows_mentioning(session: AsyncSession, needle: str) -> list[str]:
    """Every table whose rows, as text, contain ``needle`` (the whole database searched)."""
    found = []
    for table_name in sorted(SQLModel.metadata.tables):
        hits = (await session.execute(text(f'SELECT count(*) FROM "{table_name}" t WHERE t::text LIKE :needle'),
                                      {"needle": f"%{needle}%"})).scalar_one()
        if hits:
            found.append(table_name)
    return found


async def test_erasure_removes_the_identity_everywhere_and_keeps_households_meters_and_readings(
    session: AsyncSession,
) -> None:
    scenario = await resident_with_everything(session)
    before = await _counts(session)

    erasure = await erase(session)

    pseudonym = f"已注销用户 {subject_token(SECRET, PHONE)}"
    assert erasure.pseudonym == pseudonym and not erasure.already_erased
    assert erasure.changed == {
        "audit_log": 2, "households": 2, "household_owners": 2, "one_time_codes": 1, "auth_throttle": 2,
        "login_failures": 1, "residents": 1, "resident_households": 1, "household_bindings": 1, "auth_sessions": 1,
        "messages": 1, "push_devices": 1, "sms_deliveries": 1, "work_orders": 1, "work_order_photos": 1}
    assert await _counts(session) == before
    for needle in (PHONE, "王芳", ID_NUMBER, ADDRESS, "13900002222", "水务 App/2.1"):
        assert (needle, await _rows_mentioning(session, needle)) == (needle, [])
    for other in OTHERS:  # other people's records are untouched
        assert await _rows_mentioning(session, other), other
    fresh = {"populate_existing": True}
    owned = (await session.execute(select(Household).where(col(Household.id) == scenario.owned.id),
                                   execution_options=fresh)).scalar_one()
    assert (owned.account_no, owned.name, owned.phone, owned.status) == (
        scenario.owned.account_no, pseudonym, None, HouseholdStatus.suspended)
    contact = (await session.execute(select(Household).where(col(Household.id) == scenario.contact.id),
                                     execution_options=fresh)).scalar_one()
    assert (contact.name, contact.phone, contact.phone2) == ("李强", "13700003333", None)
    sessions = (await session.execute(select(AuthSession).where(col(AuthSession.id) == scenario.session_id),
                                      execution_options=fresh)).scalar_one()
    assert (sessions.revoked_at, sessions.ip) == (NOW + timedelta(hours=1), None)
    with pytest.raises(DomainError) as refused:
        await auth.authenticate(session, token=scenario.access_token, now=NOW + timedelta(hours=1), policy=POLICY)
    assert refused.value.code == ErrorCode.UNAUTHENTICATED
    states = (await session.execute(select(col(HouseholdBinding.state)).where(
        col(HouseholdBinding.resident_id) == scenario.resident.id).order_by(col(HouseholdBinding.id)))).scalars().all()
    assert list(states) == [BindingState.active, BindingState.rejected, BindingState.unbound]
    events = (await session.execute(text("SELECT payload->>'state' FROM domain_events WHERE kind = 'household.bound' "
                                         "AND (payload->>'resident_id')::bigint = :id ORDER BY id"),
                                    {"id": scenario.resident.id})).scalars().all()
    assert list(events) == ["active", "pending", "unbound", "rejected"]
    assert (await session.execute(text("SELECT count(*) FROM resident_households WHERE resident_id = :id"),
                                  {"id": scenario.resident.id})).scalar_one() == 0
    logged = (await session.execute(text("SELECT actor_name, summary, ip FROM audit_log WHERE action = 'residentLogin'"
                                         " AND actor_id = :id"), {"id": scenario.resident.id})).one()
    assert tuple(logged) == (pseudonym, f"住户 {pseudonym} 登录 成功", None)


async def test_erasing_twice_changes_nothing_the_second_time(session: AsyncSession) -> None:
    await resident_with_everything(session)
    await erase(session)
    entries = (await session.execute(text("SELECT count(*) FROM audit_log"))).scalar_one()

    again = await erase(session)

    assert again.already_erased and again.changed == {}
    assert (await session.execute(text("SELECT count(*) FROM audit_log"))).scalar_one() == entries
    erased = (await session.execute(text(
        "SELECT actor_kind, module, payload->'changed'->>'households' FROM audit_log "
        "WHERE action = 'erasePersonalData'"))).all()
    assert erased == [("system", "privacy", "2")]


async def test_a_phone_nobody_holds_is_refused_and_nothing_is_logged(session: AsyncSession) -> None:
    entries = (await session.execute(text("SELECT count(*) FROM audit_log"))).scalar_one()

    with pytest.raises(UnknownPhone):
        await export(session, "13000000000")
    with pytest.raises(UnknownPhone):
        await erase(session, "13000000000")

    assert (await session.execute(text("SELECT count(*) FROM audit_log"))).scalar_one() == entries


@pytest.mark.parametrize("phone", ["13", "1380000111", "138000011112", "abc", "13800001111; --"])
async def test_only_a_whole_mobile_or_landline_number_names_a_resident(session: AsyncSession, phone: str) -> None:
    with pytest.raises(DomainError) as export_refused:
        await export(session, phone)
    with pytest.raises(DomainError) as erase_refused:
        await erase(session, phone)

    assert (export_refused.value.code, erase_refused.value.code) == (ErrorCode.INVALID, ErrorCode.INVALID)


def test_a_phone_is_what_the_archives_accept_as_one() -> None:
    assert privacy.PHONE.pattern == f"{MOBILE.pattern}|{LANDLINE.pattern}"
    assert privacy.PHONE.flags == MOBILE.flags == LANDLINE.flags


async def test_a_landline_is_a_phone_too(session: AsyncSession) -> None:
    with pytest.raises(UnknownPhone):
        await export(session, "0571-88886666")


async def test_the_phone_matches_the_log_only_as_a_whole_number(session: AsyncSession) -> None:
    await resident_with_everything(session)
    meter_address = f"9{PHONE}12"  # a 14-digit meter address holding the phone's digits
    await record_operation(session, at=NOW, actor=ROOT, module="archives", action="updateMeter",
                           summary=f"修改水表 WM-{PHONE}0", payload={"address": meter_address}, success=True,
                           ip="198.51.100.2", request_id=None)

    document = await export(session)
    await erase(session)

    assert "updateMeter" not in [row["action"] for row in document["sections"]["audit_log"]["rows"]]
    untouched = (await session.execute(text(
        "SELECT summary, payload->>'address' FROM audit_log WHERE action = 'updateMeter'"))).one()
    assert tuple(untouched) == (f"修改水表 WM-{PHONE}0", meter_address)


async def test_erasure_rewrites_the_staff_entries_about_their_households_that_do_not_carry_the_phone(
    session: AsyncSession,
) -> None:
    scenario = await resident_with_everything(session)
    owned_id, sold_id = encode_id("Household", scenario.owned.id), encode_id("Household", scenario.sold.id)
    # As run_mutation logs them: the field arguments, the ID number masked by the log.
    await record_operation(session, at=NOW, actor=ROOT, module="archives", action="createHousehold",
                           summary=f"新增住户 {scenario.owned.account_no}: 成功",
                           payload={"input": {"accountNo": scenario.owned.account_no, "name": "王芳",
                                              "idNumber": ID_NUMBER, "address": ADDRESS}},
                           success=True, ip="198.51.100.2", request_id=None)
    await record_operation(session, at=NOW, actor=ROOT, module="archives", action="updateHousehold",
                           summary="修改住户: 成功", payload={"id": owned_id, "input": {"idNumber": ID_NUMBER,
                                                                                      "address": ADDRESS}},
                           success=True, ip="198.51.100.2", request_id=None)
    await record_operation(session, at=NOW, actor=ROOT, module="archives", action="setHouseholdStatus",
                           summary=f"住户 {scenario.sold.account_no} 状态改为 正常 (王芳 申请)",
                           payload={"id": sold_id, "status": "active"}, success=True, ip="198.51.100.2",
                           request_id=None)
    # Another household's entry, its account number a longer one beginning with theirs.
    await record_operation(session, at=NOW, actor=ROOT, module="archives", action="updateHousehold",
                           summary=f"修改住户 {scenario.owned.account_no}9: 成功 王芳",
                           payload={"id": encode_id("Household", scenario.contact.id), "input": {"name": "王芳"}},
                           success=True, ip="198.51.100.2", request_id=None)
    pseudonym = f"已注销用户 {subject_token(SECRET, PHONE)}"

    erasure = await erase(session)

    assert erasure.changed["audit_log"] == 5
    rows = (await session.execute(text(
        "SELECT action, summary, payload::text FROM audit_log WHERE actor_kind = 'staff' "
        "AND action IN ('createHousehold', 'updateHousehold', 'setHouseholdStatus') ORDER BY id"))).all()
    about_theirs = [row for row in rows if f"{scenario.owned.account_no}9" not in row.summary]
    assert len(about_theirs) == 4
    for row in about_theirs:
        for identity in ("王芳", ID_NUMBER, masked_id_number(ID_NUMBER), ADDRESS):
            assert identity not in row.summary + row.payload, (row.action, identity)
    assert [row.summary for row in about_theirs[1:]] == [
        f"新增住户 {scenario.owned.account_no}: 成功", "修改住户: 成功",
        f"住户 {scenario.sold.account_no} 状态改为 正常 ({pseudonym} 申请)"]
    assert owned_id in about_theirs[2].payload  # the record keeps which household it was about
    other = [row for row in rows if f"{scenario.owned.account_no}9" in row.summary]
    assert [(row.summary, "王芳" in row.payload) for row in other] == [
        (f"修改住户 {scenario.owned.account_no}9: 成功 王芳", True)]


async def test_the_export_shows_staff_entries_without_the_staff_members_name_or_address(session: AsyncSession) -> None:
    scenario = await resident_with_everything(session)

    document = await export(session)

    shown = [(row["action"], row["actor_name"], row["ip"]) for row in document["sections"]["audit_log"]["rows"]]
    assert shown == [("residentLogin", scenario.resident.name, "203.0.113.7"), ("updateHousehold", "工作人员", None)]


async def test_the_pseudonym_carries_64_bits(session: AsyncSession) -> None:
    await resident_with_everything(session)

    erasure = await erase(session)

    assert re.fullmatch(r"已注销用户 [0-9a-f]{16}", erasure.pseudonym)
