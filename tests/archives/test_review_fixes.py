"""Fixes from the archives review: nested staff data hidden from residents and outside a
scoped operator's reach, assignment scope on both sides, Excel import/export edge cases,
ASCII-only formats, transfer and export details, and unique-key races at flush."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend import db
from backend.archives import excel as archive_excel
from backend.archives import service
from backend.archives.errors import (
    DuplicateAccountNo,
    DuplicateCollectorAddress,
    DuplicateConcentratorAddress,
    DuplicateMeterAddress,
    DuplicateMeterCode,
    DuplicateMeterModel,
)
from backend.archives.models import (
    Concentrator,
    ConnectionKind,
    CustomerType,
    Household,
    HouseholdStatus,
    Meter,
    MeterType,
)
from backend.archives.service import areas as service_areas
from backend.archives.service import devices as service_devices
from backend.archives.service import households as service_households
from backend.archives.service import meters as service_meters
from backend.auth.service import login_resident, request_login_code
from backend.clock import utcnow
from backend.db import session_factory
from backend.errors import DomainError, NotFound
from backend.exports.excel import CellError, ImportRowsInvalid, NotXlsx, read_rows
from backend.graphql.relay import encode_id
from backend.readings.service import ReadingIn, ingest_readings
from backend.readings.usage import usage_between
from tests.factories import AreaTree, Staff, auth_policy, bind_at_counter, insert_legacy_assignment, make_area_tree, make_staff, unique
from tests.graphql.client import TEST_SECRET, GraphQLClient, graphql_client

TZ = "Asia/Shanghai"
ASSIGNMENT_HEADER = ("表计编码", "户号", "起始时间", "结束时间", "起始读数", "结束读数")
HOUSEHOLD_HEADER = ("户号", "户名", "区域编码")

_addresses = iter(range(20265000000000, 20265999999999))


def next_address() -> str:
    return f"{next(_addresses):014d}"


def workbook(header: tuple[str, ...], *rows: tuple[Any, ...]) -> bytes:
    book = openpyxl.Workbook()
    sheet: Any = book.active
    sheet.append(list(header))
    for row in rows:
        sheet.append(list(row))
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------- GraphQL world


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_operator: Staff
    household: Household
    resident_token: str


class _CodeCatcher:
    def __init__(self) -> None:
        self.code = ""

    async def send_login_code(self, phone: str, code: str) -> None:
        self.code = code


async def _concentrator(session: AsyncSession, area: Any, name: str, terminal: int) -> Concentrator:
    cipher = service.TerminalPasswordCipher(TEST_SECRET)
    return await service.create_concentrator(session, cipher=cipher, fields=service.ConcentratorChanges(
        name=name, region_code="3302", terminal_address=terminal, area_id=area.id, connection=ConnectionKind.dtu_socket,
        host=f"10.9.0.{terminal}", port=9000 + terminal, serial_url=None,
    ))


async def _meter(session: AsyncSession, area: Any, code: str, concentrator: Concentrator | None = None,
                 collector_id: int | None = None) -> Meter:
    return await service.create_meter(session, fields=service.MeterChanges(
        name="户表", code=code, address=next_address(), meter_type=MeterType.cold_water, area_id=area.id,
        concentrator_id=concentrator.id if concentrator is not None else None, collector_id=collector_id,
    ))


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    """One 城东 household served by an east meter (east concentrator and collector), a west
    meter, and a replacement of another west meter by an east meter hung on the west
    concentrator; its owner changed once and its status once; a resident bound it."""
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        east_operator = await make_staff(session, permissions={"areas:read", "archives:read"}, areas=[tree.east])
        east_c = await _concentrator(session, tree.east_community, "东集中器", 11)
        west_c = await _concentrator(session, tree.west_community, "西集中器", 12)
        assert east_c.id is not None
        collector = await service.save_collector(session, concentrator_id=east_c.id, address="C01", name="采集器1")
        household = await service.create_household(
            session, account_no=unique("RF"), name="张三", area_id=tree.east_community.id, phone="13911112222",
            phone2="13911113333", owner_since=date(2025, 1, 1),
        )
        assert household.id is not None
        east_meter = await _meter(session, tree.east_community, "RF-E1", east_c, collector.id)
        west_meter = await _meter(session, tree.west_community, "RF-W1", west_c)
        west_old = await _meter(session, tree.west_community, "RF-W2", west_c)
        east_new = await _meter(session, tree.east_community, "RF-E2", west_c)
        t0 = utcnow() - timedelta(days=30)
        assert east_meter.id is not None
        await service.assign_meter(session, meter_id=east_meter.id, household_id=household.id, valid_from=t0)
        # West meters serving an east household: rows from before the same-subtree rule,
        # which nested fields must still not reveal.
        for meter in (west_meter, west_old):
            assert meter.id is not None
            await insert_legacy_assignment(session, meter_id=meter.id, household_id=household.id, valid_from=t0)
        assert west_old.id is not None and east_new.id is not None
        await service.replace_meter(session, old_meter_id=west_old.id, new_meter_id=east_new.id, replaced_at=t0 + timedelta(days=1),
                                    old_final_reading=Decimal(3), new_initial_reading=Decimal(0), replaced_by="换表员")
        await service.transfer_ownership(session, household_id=household.id, name="张伟", phone="13900000000",
                                         id_number=None, valid_from=date(2026, 1, 1))
        await service.set_household_status(session, household_id=household.id, status=HouseholdStatus.suspended,
                                           reason="报停", changed_by="管理员甲", now=utcnow())
        await service.set_household_status(session, household_id=household.id, status=HouseholdStatus.active,
                                           reason="恢复", changed_by="管理员甲", now=utcnow())
        policy = auth_policy(TEST_SECRET)
        catcher = _CodeCatcher()
        await request_login_code(session, phone="13900000000", now=utcnow(), policy=policy, sender=catcher)
        pair = await login_resident(session, phone="13900000000", code=catcher.code, now=utcnow(), policy=policy)
        await bind_at_counter(session, resident=pair.principal, household=household)
    return World(tree, admin, east_operator, household, pair.access_token)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


DETAIL = """
query($id: ID!) {
  household(id: $id) {
    phone2
    meters { code concentrator { name host port serialUrl } collector { address } }
    assignments { meter { code concentrator { name } } }
    replacements { oldMeter { code } newMeter { code concentrator { name } } }
    ownerHistory { name phone }
    statusHistory { status changedBy }
  }
}"""


async def _detail(client: GraphQLClient, token: str, world: World) -> dict[str, Any]:
    result = await client.execute(DETAIL, {"id": encode_id("Household", world.household.id)}, token=token)
    assert "errors" not in result, result["errors"]
    household: dict[str, Any] = result["data"]["household"]
    return household


async def test_resident_sees_no_devices_previous_owners_or_staff_names(client: GraphQLClient, world: World) -> None:
    household = await _detail(client, world.resident_token, world)

    assert sorted(m["code"] for m in household["meters"]) == ["RF-E1", "RF-E2", "RF-W1"]
    assert all(m["concentrator"] is None and m["collector"] is None for m in household["meters"])
    assert household["ownerHistory"] == [{"name": "张伟", "phone": "13900000000"}]
    assert [c["changedBy"] for c in household["statusHistory"]] == [None, None]


async def test_scoped_operator_gets_no_out_of_scope_devices_through_nested_fields(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)
    household = await _detail(client, token, world)

    meters = {m["code"]: m for m in household["meters"]}
    assert sorted(meters) == ["RF-E1", "RF-E2"]  # RF-W1 lies in 城西
    assert meters["RF-E1"]["concentrator"] == {"name": "东集中器", "host": "10.9.0.11", "port": 9011, "serialUrl": None}
    assert meters["RF-E1"]["collector"] == {"address": "C01"}
    assert meters["RF-E2"]["concentrator"] is None  # hung on the west concentrator
    assert sorted((a["meter"] or {}).get("code", "-") for a in household["assignments"]) == ["-", "-", "RF-E1", "RF-E2"]
    assert household["replacements"] == [{"oldMeter": None, "newMeter": {"code": "RF-E2", "concentrator": None}}]
    # Staff keep the whole history and the names.
    assert [o["name"] for o in household["ownerHistory"]] == ["张三", "张伟"]
    assert [c["changedBy"] for c in household["statusHistory"]] == ["管理员甲", "管理员甲"]


async def test_admin_still_sees_everything_nested(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    household = await _detail(client, token, world)

    assert sorted(m["code"] for m in household["meters"]) == ["RF-E1", "RF-E2", "RF-W1"]
    assert household["replacements"] == [
        {"oldMeter": {"code": "RF-W2"}, "newMeter": {"code": "RF-E2", "concentrator": {"name": "西集中器"}}},
    ]


async def test_transfer_clears_the_old_owners_second_phone(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    assert (await _detail(client, token, world))["phone2"] is None


async def test_household_export_url_carries_the_customer_type(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    result = await client.execute("{ householdExportUrl(customerType: non_residential, search: \"x\") }", token=token)
    assert "errors" not in result, result["errors"]
    params = parse_qs(urlsplit(result["data"]["householdExportUrl"]).query)
    assert params["customerType"] == ["non_residential"] and params["search"] == ["x"]


async def test_household_export_filters_by_customer_type_and_searches_phone2(committed_engine: AsyncEngine, world: World) -> None:
    async with session_factory(committed_engine)() as session, session.begin():
        area = world.tree.west_community.id
        await service.create_household(session, account_no=unique("EX"), name="商铺", area_id=area,
                                       phone2="13755556666", customer_type=CustomerType.non_residential)
        await service.create_household(session, account_no=unique("EX"), name="住家", area_id=area, phone2="13755556667")
    patterns = [world.tree.company.path + "%"]

    async def names(export_filter: archive_excel.HouseholdExportFilter) -> list[str]:
        found = []
        async with db.raw_read(committed_engine) as connection:
            async for row in archive_excel.household_export_rows(connection, scope_patterns=patterns, export_filter=export_filter):
                found.append(row[archive_excel.HOUSEHOLD_EXPORT_SHEET.keys.index("name")])
        return found

    assert sorted(await names(archive_excel.HouseholdExportFilter(search="1375555666"))) == ["住家", "商铺"]
    assert await names(archive_excel.HouseholdExportFilter(search="1375555666", customer_type="non_residential")) == ["商铺"]


# --------------------------------------------------------------------------- assignment scope (service)


async def test_ending_or_replacing_needs_the_household_in_scope_too(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    west_household = await service.create_household(session, account_no=unique("SC"), name="李娜", area_id=tree.west_community.id)
    assert west_household.id is not None
    east_meter = await _meter(session, tree.east_community, unique("SC-E"))
    spare = await _meter(session, tree.east_community, unique("SC-S"))
    assert east_meter.id is not None and spare.id is not None
    # A row from before the same-subtree rule (the service refuses new ones).
    await insert_legacy_assignment(session, meter_id=east_meter.id, household_id=west_household.id,
                                   valid_from=utcnow() - timedelta(days=2))
    east = [tree.east.path + "%"]
    with pytest.raises(NotFound):
        await service.end_assignment(session, meter_id=east_meter.id, valid_to=utcnow(), end_reading=Decimal(1),
                                     scope_patterns=east)
    with pytest.raises(NotFound):
        await service.replace_meter(session, old_meter_id=east_meter.id, new_meter_id=spare.id, replaced_at=utcnow(),
                                    old_final_reading=Decimal(1), new_initial_reading=Decimal(0), replaced_by="x",
                                    scope_patterns=east)


# --------------------------------------------------------------------------- Excel


async def test_assignment_import_without_update_refuses_changed_rows_instead_of_overlapping(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    first = await service.create_household(session, account_no=unique("AI"), name="甲", area_id=tree.east_community.id)
    second = await service.create_household(session, account_no=unique("AI"), name="乙", area_id=tree.east_community.id)
    meter = await _meter(session, tree.east_community, unique("AI-M"))
    scope = [tree.company.path + "%"]
    sheet = read_rows(archive_excel.ASSIGNMENT_SHEET, workbook(
        ASSIGNMENT_HEADER, (meter.code, first.account_no, "2025-01-01 08:00:00", None, 0, None)))
    result = await archive_excel.import_assignments(session, sheet=sheet, scope_patterns=scope, update_existing=False, tz=TZ)
    assert result.inserted == 1

    # The file ends the stored assignment and opens another; without update_existing the
    # stored one stays open, so the new one would overlap it.
    sheet = read_rows(archive_excel.ASSIGNMENT_SHEET, workbook(
        ASSIGNMENT_HEADER,
        (meter.code, first.account_no, "2025-01-01 08:00:00", "2025-03-01 08:00:00", 0, 5),
        (meter.code, second.account_no, "2025-06-01 08:00:00", None, 5, None),
    ))
    with pytest.raises(ImportRowsInvalid) as refused:
        await archive_excel.import_assignments(session, sheet=sheet, scope_patterns=scope, update_existing=False, tz=TZ)
    assert sorted(error.row for error in refused.value.errors) == [2, 3]


async def test_imported_move_out_and_move_in_store_their_handover_readings(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    leaving = await service.create_household(session, account_no=unique("AI"), name="甲", area_id=tree.east_community.id)
    arriving = await service.create_household(session, account_no=unique("AI"), name="乙", area_id=tree.east_community.id)
    meter = await _meter(session, tree.east_community, unique("AI-M"))
    assert meter.id is not None and leaving.id is not None and arriving.id is not None
    sheet = read_rows(archive_excel.ASSIGNMENT_SHEET, workbook(
        ASSIGNMENT_HEADER,
        (meter.code, leaving.account_no, "2025-01-01 08:00:00", "2025-03-01 08:00:00", 0, 42),
        (meter.code, arriving.account_no, "2025-03-01 08:00:00", None, 42, None),
    ))

    await archive_excel.import_assignments(session, sheet=sheet, scope_patterns=[tree.company.path + "%"],
                                           update_existing=False, tz=TZ)
    await ingest_readings(session, readings=[ReadingIn(meter.id, datetime(2025, 4, 1, tzinfo=ZoneInfo(TZ)), Decimal(50))],
                          source="test", now=datetime(2025, 4, 2, tzinfo=ZoneInfo(TZ)))

    usage = await usage_between(session, household_ids=[leaving.id, arriving.id],
                                start=datetime(2025, 1, 1, tzinfo=ZoneInfo(TZ)), end=datetime(2025, 5, 1, tzinfo=ZoneInfo(TZ)))
    assert usage == {leaving.id: Decimal("42.0000"), arriving.id: Decimal("8.0000")}


async def test_household_import_refuses_malformed_area_ids_as_row_errors(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    sheet = read_rows(archive_excel.HOUSEHOLD_SHEET, workbook(
        HOUSEHOLD_HEADER,
        (unique("HI"), "甲", "#99999999999999999999"),
        (unique("HI"), "乙", "#²"),
        (unique("HI"), "丙", f"#{tree.east_community.id}"),
    ))
    with pytest.raises(ImportRowsInvalid) as refused:
        await archive_excel.import_households(session, sheet=sheet, scope_patterns=[tree.company.path + "%"],
                                              update_existing=False, today=date(2026, 11, 25))
    assert sorted((error.row, error.column) for error in refused.value.errors) == [(2, "区域编码"), (3, "区域编码")]


def test_a_valid_zip_with_a_truncated_sheet_is_not_xlsx() -> None:
    content = workbook(HOUSEHOLD_HEADER, *[(f"A{i}", "甲", "#1") for i in range(200)])
    source, target = zipfile.ZipFile(io.BytesIO(content)), io.BytesIO()
    with zipfile.ZipFile(target, "w") as rebuilt:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = data[: len(data) // 2]
            rebuilt.writestr(item, data)
    with pytest.raises(NotXlsx):
        read_rows(archive_excel.HOUSEHOLD_SHEET, target.getvalue())


def test_a_time_rounding_past_the_last_day_is_a_cell_error() -> None:
    with pytest.raises(CellError):
        archive_excel.moment()("9999-12-31 23:59:59.7")


@pytest.mark.parametrize(("key", "value"), [
    ("phone", "1３８００００００００"), ("phone2", "0571-８８８８８８８８"), ("id_number", "１１０１０１１９９００１０１１２３４"),
])
def test_sheet_formats_take_ascii_digits_only(key: str, value: str) -> None:  # (cells are stripped of whitespace)
    column = next(c for c in archive_excel.HOUSEHOLD_COLUMNS if c.key == key)
    with pytest.raises(CellError):
        column.parse(value)


@pytest.mark.parametrize(("pattern", "value"), [
    (service.MOBILE, "13800000000\n"), (service.MOBILE, "１３８００００００００"), (service.ACCOUNT_NO, "A1\n"),
    (service.ID_NUMBER, "11010119900101123４"), (service.METER_CODE, "M1\n"), (service.REGION_CODE, "３３０１"),
    (service.ADDRESS_RULES["cjt188"], "2026000000000１"), (service.OTHER_ADDRESS, "ab\n"), (service.AREA_CODE, "D1\n"),
    (service.LANDLINE, "0571-8888888８"),
])
def test_service_formats_take_ascii_digits_only(pattern: Any, value: str) -> None:
    assert pattern.fullmatch(value) is None


async def test_create_household_refuses_a_trailing_newline_or_fullwidth_digits(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    for fields in ({"account_no": unique("NL") + "\n"}, {"phone": "13800000000\n"}, {"id_number": "１１０１０１１９９００１０１１２３４"}):
        arguments: dict[str, Any] = {"account_no": unique("NL"), "name": "甲", "area_id": tree.east_community.id, **fields}
        with pytest.raises(DomainError):
            await service.create_household(session, **arguments)


async def test_device_formats_refuse_a_trailing_newline_or_fullwidth_digits(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    area = tree.east_community.id
    for code, address in ((unique("NL") + "\n", next_address()), (unique("NL"), next_address()[:-1] + "１"),
                          (unique("NL"), next_address() + "\n")):
        with pytest.raises(DomainError):
            await service.create_meter(session, fields=service.MeterChanges(
                name="户表", code=code, address=address, meter_type=MeterType.cold_water, area_id=area))
    with pytest.raises(DomainError):
        await service.create_concentrator(session, cipher=service.TerminalPasswordCipher(TEST_SECRET), fields=service.ConcentratorChanges(
            name="集中器", region_code="３３０１", terminal_address=5, area_id=area, connection=ConnectionKind.tcp_login))


# --------------------------------------------------------------------------- unique races


@pytest.fixture
def no_prechecks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A concurrent request inserting between the pre-check and the flush: the checks see nothing."""

    async def never(session: AsyncSession, statement: Any) -> bool:
        return False

    for module in (service_areas, service_households, service_meters, service_devices):
        monkeypatch.setattr(module, "_exists", never)


async def test_a_raced_account_number_is_a_duplicate_account_no(session: AsyncSession, no_prechecks: None) -> None:
    tree = await make_area_tree(session)
    account = unique("RC")
    await service.create_household(session, account_no=account, name="甲", area_id=tree.east_community.id)
    with pytest.raises(DuplicateAccountNo):
        await service.create_household(session, account_no=account, name="乙", area_id=tree.east_community.id)
    # The session is still usable after the refused flush.
    await service.create_household(session, account_no=unique("RC"), name="丙", area_id=tree.east_community.id)


async def test_raced_meter_and_concentrator_keys_are_their_duplicates(session: AsyncSession, no_prechecks: None) -> None:
    tree = await make_area_tree(session)
    meter = await _meter(session, tree.east_community, unique("RC-M"))
    with pytest.raises(DuplicateMeterCode):
        await service.create_meter(session, fields=service.MeterChanges(
            name="户表", code=meter.code, address=next_address(), meter_type=MeterType.cold_water, area_id=tree.east_community.id))
    with pytest.raises(DuplicateMeterAddress):
        await service.create_meter(session, fields=service.MeterChanges(
            name="户表", code=unique("RC-M"), address=meter.address, meter_type=MeterType.cold_water, area_id=tree.east_community.id))
    await _concentrator(session, tree.east_community, "集中器", 77)
    with pytest.raises(DuplicateConcentratorAddress):
        await _concentrator(session, tree.east_community, "集中器2", 77)


async def test_raced_meter_model_and_collector_keys_are_their_duplicates(session: AsyncSession, no_prechecks: None) -> None:
    tree = await make_area_tree(session)
    fields = service.MeterModelFields(vendor=unique("厂家"), name="LXS-20", caliber=20)
    await service.save_meter_model(session, fields=fields)
    with pytest.raises(DuplicateMeterModel):
        await service.save_meter_model(session, fields=fields)
    concentrator = await _concentrator(session, tree.east_community, "集中器", 78)
    assert concentrator.id is not None
    await service.save_collector(session, concentrator_id=concentrator.id, address="C9", name="甲")
    with pytest.raises(DuplicateCollectorAddress):
        await service.save_collector(session, concentrator_id=concentrator.id, address="C9", name="乙")


async def test_imports_cannot_move_an_assigned_meter_or_household_out_of_the_same_subtree(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await service.create_household(session, account_no=unique("XA"), name="甲", area_id=tree.east_community.id)
    meter = await _meter(session, tree.east_community, unique("XA-M"))
    assert meter.id is not None and household.id is not None
    await service.assign_meter(session, meter_id=meter.id, household_id=household.id, valid_from=utcnow() - timedelta(days=2))
    scope = [tree.company.path + "%"]
    moved_household = read_rows(archive_excel.HOUSEHOLD_SHEET, workbook(
        HOUSEHOLD_HEADER, (household.account_no, "甲", f"#{tree.west_community.id}")))
    moved_meter = read_rows(archive_excel.METER_SHEET, workbook(
        ("表计编码", "表计名称", "表地址", "表类型", "区域编码"),
        (meter.code, meter.name, meter.address, "冷水表", f"#{tree.west.id}")))

    with pytest.raises(ImportRowsInvalid) as household_refused:
        await archive_excel.import_households(session, sheet=moved_household, scope_patterns=scope, update_existing=True,
                                              today=date(2026, 11, 25))
    with pytest.raises(ImportRowsInvalid) as meter_refused:
        await archive_excel.import_meters(session, sheet=moved_meter, scope_patterns=scope, update_existing=True)

    for refused in (household_refused, meter_refused):
        assert [(e.row, e.column, e.message) for e in refused.value.errors] == [
            (2, "区域编码", "水表只能服务其所在区域 (含下级区域) 内的住户")]
    await session.refresh(household)
    await session.refresh(meter)
    assert (household.area_id, meter.area_id) == (tree.east_community.id, tree.east_community.id)
