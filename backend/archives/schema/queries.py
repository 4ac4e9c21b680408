"""Archive queries and the ``node(id:)`` fetchers: every row read within the caller's scope."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from backend.archives import service
from backend.archives.http import AREAS, ASSIGNMENTS, CONCENTRATORS, METERS
from backend.archives.http import EXPORT_PATH as HOUSEHOLD_EXPORT_PATH
from backend.archives.models import Collector
from backend.archives.schema.types import (
    AreaByIdLoader,
    AreaKindEnum,
    AreaType,
    AssignmentKindEnum,
    CollectorsByConcentratorIdLoader,
    CollectorType,
    ConcentratorType,
    ConnectionKindEnum,
    CustomerTypeEnum,
    DeviceStatusEnum,
    HouseholdOrderEnum,
    HouseholdStatusEnum,
    HouseholdType,
    MeterAssignmentType,
    MeterKindEnum,
    MeterModelType,
    MeterOrderEnum,
    MeterReplacementType,
    MeterStatusEnum,
    MeterType_,
    MeterTypeEnum,
    MonitoringStationType,
    visible,
)
from backend.auth.principal import Principal
from backend.errors import BadUserInput, DomainError, NotFound
from backend.graphql.context import Context
from backend.graphql.pagination import Connection, PageRequest, paginate, paginate_query, selects
from backend.graphql.permissions import Requires, RequiresAny
from backend.graphql.relay import decode_id


async def fetch_area(context: Any, pk: int) -> AreaType | None:
    principal = context.principal
    if principal is None or not principal.has("areas:read"):
        return None
    area = await context.loader(AreaByIdLoader).load(pk)
    return AreaType.from_row(area) if area is not None and visible(principal, area.path) else None


async def fetch_household(context: Any, pk: int) -> HouseholdType | None:
    """A household the caller may see: a resident's own, or one in a staff member's scope."""
    principal: Principal | None = context.principal
    if principal is None:
        return None
    async with context.read() as session:
        if principal.is_resident:
            found = (await service.households_by_ids(session, [pk])).get(pk)
            return HouseholdType.from_row(found) if found is not None and pk in principal.household_ids else None
        if not principal.has("archives:read"):
            return None
        try:
            household = await service.household_in_scope(session, household_id=pk, scope_patterns=principal.scope_patterns())
        except DomainError:
            return None
    return HouseholdType.from_row(household)


async def fetch_meter(context: Any, pk: int) -> MeterType_ | None:
    principal: Principal | None = context.principal
    if principal is None or not principal.has("archives:read"):
        return None
    async with context.read() as session:
        try:
            meter = await service.meter_in_scope(session, meter_id=pk, scope_patterns=principal.scope_patterns())
        except DomainError:
            return None
    return MeterType_.from_row(meter)


async def fetch_station(context: Any, pk: int) -> MonitoringStationType | None:
    """A monitoring station in the caller's scope (数据监测's figures: ``monitoringStations``)."""
    principal: Principal | None = context.principal
    if principal is None or not principal.has("archives:read"):
        return None
    async with context.read() as session:
        try:
            station = await service.station_in_scope(session, station_id=pk, scope_patterns=principal.scope_patterns())
        except DomainError:
            return None
    return MonitoringStationType.from_row(station)


async def fetch_concentrator(context: Any, pk: int) -> ConcentratorType | None:
    principal: Principal | None = context.principal
    if principal is None or not principal.has("archives:read"):
        return None
    async with context.read() as session:
        try:
            found = await service.concentrator_in_scope(session, concentrator_id=pk, scope_patterns=principal.scope_patterns())
        except DomainError:
            return None
    return ConcentratorType.from_row(found)


async def fetch_collector(context: Any, pk: int) -> CollectorType | None:
    """A collector is visible when its concentrator is."""
    async with context.read() as session:
        collector = await session.get(Collector, pk)
    if collector is None or await fetch_concentrator(context, collector.concentrator_id) is None:
        return None
    return CollectorType.from_row(collector)


async def fetch_meter_model(context: Any, pk: int) -> MeterModelType | None:
    principal: Principal | None = context.principal
    if principal is None or not principal.has("archives:read"):
        return None
    async with context.read() as session:
        found = (await service.meter_models_by_ids(session, [pk])).get(pk)
    return MeterModelType.from_row(found) if found is not None else None




def _area_filter(area_id: strawberry.ID | None) -> int | None:
    return decode_id(area_id, "Area", field="areaId") if area_id else None


def _period(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    """A ``[from, to)`` period of a list filter, either bound open; an empty one is refused
    rather than answered with nothing."""
    if start is not None and end is not None and end <= start:
        raise BadUserInput("结束时间须晚于开始时间", "`to` must be after `from`", field="to")
    return start, end


def _household_filter(household_id: strawberry.ID | None, account_no: str | None) -> tuple[int | None, str | None]:
    """One household, by global id or by account number (缴费号): at most one of them."""
    if household_id and account_no:
        raise BadUserInput("住户只能按 ID 或缴费号之一筛选", "Give householdId or accountNo, not both", field="accountNo")
    return (decode_id(household_id, "Household", field="householdId") if household_id else None,
            account_no.strip() if account_no and account_no.strip() else None)


_PERIOD = ("Periods are half-open, [from, to): an instant equal to `from` is in, one equal to `to` is not; "
           "either bound may be left out. `to` at or before `from` is BAD_USER_INPUT.")


@strawberry.type
class Query:
    @strawberry.field(permission_classes=[Requires("areas:read")], description="Areas within your data scope, in tree order.")
    async def areas(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        parent_id: strawberry.ID | None = None,
        kind: AreaKindEnum | None = None,  # type: ignore[valid-type]
        search: str | None = None,
    ) -> Connection[AreaType]:
        page = PageRequest.from_args(first, after, last, before)
        principal = info.context.caller
        query = service.area_page_query(
            scope_patterns=principal.scope_patterns(),
            parent_id=decode_id(parent_id, "Area", field="parentId") if parent_id else None,
            kind=kind,
            search=search,
        )
        return await paginate_query(info.context, query, page, lambda row: AreaType.from_page_row(row, principal),
                                    count=selects(info, "totalCount"))

    @strawberry.field(
        permission_classes=[RequiresAny("archives:read", "resident:self")],
        description="One household: a resident's own, or one in your data scope. Others are NOT_FOUND.",
    )
    async def household(self, info: Info, id: strawberry.ID) -> HouseholdType:
        found = await fetch_household(info.context, decode_id(id, "Household"))
        if found is None:
            raise NotFound(field="id")
        return found

    @strawberry.field(permission_classes=[Requires("resident:self")], description="The households you have bound.")
    async def my_households(self, info: Info) -> list[HouseholdType]:
        principal = info.context.caller
        async with info.context.read() as session:
            found = await service.households_by_ids(session, principal.household_ids)
        return [HouseholdType.from_row(found[pk]) for pk in principal.household_ids if pk in found]

    @strawberry.field(permission_classes=[Requires("archives:read")], description="Households (住户管理) within your scope.")
    async def households(
        self, info: Info, first: int | None = None, after: str | None = None, last: int | None = None,
        before: str | None = None, area_id: strawberry.ID | None = None,
        status: HouseholdStatusEnum | None = None,  # type: ignore[valid-type]
        customer_type: CustomerTypeEnum | None = None,  # type: ignore[valid-type]
        search: str | None = None,
        order_by: HouseholdOrderEnum = service.HouseholdOrder.account_no,  # type: ignore[valid-type]
        descending: bool = False,
        has_meter: Annotated[bool | None, strawberry.argument(
            description="true: a meter serves the household now; false: households without a meter (未配表), "
            "active households with no current assignment.")] = None,
    ) -> Connection[HouseholdType]:
        page = PageRequest.from_args(first, after, last, before)
        query = service.household_page_query(
            scope_patterns=info.context.caller.scope_patterns(), area_id=_area_filter(area_id), status=status,
            customer_type=customer_type, search=search, order=order_by, descending=descending, has_meter=has_meter,
        )
        return await paginate_query(info.context, query, page, HouseholdType.from_page_row, count=selects(info, "totalCount"))

    @strawberry.field(permission_classes=[Requires("archives:read")],
                      description="Meters and monitoring points (设备管理) within your scope.")
    async def meters(
        self, info: Info, first: int | None = None, after: str | None = None, last: int | None = None,
        before: str | None = None, area_id: strawberry.ID | None = None,
        status: MeterStatusEnum | None = None,  # type: ignore[valid-type]
        meter_type: MeterTypeEnum | None = None,  # type: ignore[valid-type]
        kind: MeterKindEnum | None = None,  # type: ignore[valid-type]
        concentrator_id: strawberry.ID | None = None,
        search: str | None = None,
        order_by: MeterOrderEnum = service.MeterOrder.code,  # type: ignore[valid-type]
        descending: bool = False,
        assigned: Annotated[bool | None, strawberry.argument(
            description="true: meters serving a household now; false: meters not assigned (未配表), household meters "
            "in stock or installed with no current assignment.")] = None,
        model_id: Annotated[strawberry.ID | None, strawberry.argument(
            description="The meters of one model (型号, a MeterModel id).")] = None,
    ) -> Connection[MeterType_]:
        page = PageRequest.from_args(first, after, last, before)
        query = service.meter_page_query(
            scope_patterns=info.context.caller.scope_patterns(), area_id=_area_filter(area_id), status=status,
            meter_type=meter_type, kind=kind,
            concentrator_id=decode_id(concentrator_id, "Concentrator", field="concentratorId") if concentrator_id else None,
            search=search, order=order_by, descending=descending, assigned=assigned,
            model_id=decode_id(model_id, "MeterModel", field="modelId") if model_id else None,
        )
        return await paginate_query(info.context, query, page, MeterType_.from_row, count=selects(info, "totalCount"))

    @strawberry.field(permission_classes=[Requires("archives:read")], description="One meter in your scope; others are NOT_FOUND.")
    async def meter(self, info: Info, id: strawberry.ID) -> MeterType_:
        found = await fetch_meter(info.context, decode_id(id, "Meter"))
        if found is None:
            raise NotFound(field="id")
        return found

    @strawberry.field(permission_classes=[Requires("archives:read")], description="Concentrators (集中器) within your scope.")
    async def concentrators(
        self, info: Info, first: int | None = None, after: str | None = None, last: int | None = None,
        before: str | None = None, area_id: strawberry.ID | None = None,
        status: DeviceStatusEnum | None = None,  # type: ignore[valid-type]
        connection: ConnectionKindEnum | None = None,  # type: ignore[valid-type]
        search: str | None = None,
    ) -> Connection[ConcentratorType]:
        page = PageRequest.from_args(first, after, last, before)
        statement = service.concentrators_statement(
            scope_patterns=info.context.caller.scope_patterns(), area_id=_area_filter(area_id), status=status,
            connection=connection, search=search,
        )
        async with info.context.read() as session:
            return await paginate(session, statement, page, lambda row: ConcentratorType.from_row(row[0]),
                                  count=selects(info, "totalCount"))

    @strawberry.field(
        permission_classes=[Requires("archives:read")],
        description="Meter assignments (配表管理) of households in your scope, newest first: of households in the "
        "`areaId` subtree; assigned or ended (validFrom or validTo) in the period [from, to); of the meter whose "
        "code (表计编码) is `meterCode`; of one household, by `householdId` or `accountNo` (缴费号), not both; "
        "`kind` current (serving now) or ended. " + _PERIOD,
    )
    async def meter_assignments(
        self, info: Info, first: int | None = None, after: str | None = None, last: int | None = None,
        before: str | None = None, area_id: strawberry.ID | None = None,
        start: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        end: Annotated[datetime | None, strawberry.argument(name="to")] = None,
        meter_code: str | None = None, household_id: strawberry.ID | None = None, account_no: str | None = None,
        kind: AssignmentKindEnum | None = None,  # type: ignore[valid-type]
    ) -> Connection[MeterAssignmentType]:
        page = PageRequest.from_args(first, after, last, before)
        period_from, period_to = _period(start, end)
        household_pk, account = _household_filter(household_id, account_no)
        query = service.assignment_page_query(
            scope_patterns=info.context.caller.scope_patterns(), area_id=_area_filter(area_id), period_from=period_from,
            period_to=period_to, meter_code=meter_code.strip() if meter_code else None, household_id=household_pk,
            account_no=account, kind=kind,
        )
        return await paginate_query(info.context, query, page, MeterAssignmentType.from_page_row,
                                    count=selects(info, "totalCount"))

    @strawberry.field(
        permission_classes=[Requires("archives:read")],
        description="Meter replacements (换表记录) of households in your scope, newest first: of households in the "
        "`areaId` subtree; replaced in the period [from, to); where `meterCode` is the old or the new meter; of one "
        "household, by `householdId` or `accountNo`, not both. " + _PERIOD,
    )
    async def meter_replacements(
        self, info: Info, first: int | None = None, after: str | None = None, last: int | None = None,
        before: str | None = None, area_id: strawberry.ID | None = None,
        start: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        end: Annotated[datetime | None, strawberry.argument(name="to")] = None,
        meter_code: str | None = None, household_id: strawberry.ID | None = None, account_no: str | None = None,
    ) -> Connection[MeterReplacementType]:
        page = PageRequest.from_args(first, after, last, before)
        period_from, period_to = _period(start, end)
        household_pk, account = _household_filter(household_id, account_no)
        query = service.replacement_page_query(
            scope_patterns=info.context.caller.scope_patterns(), area_id=_area_filter(area_id), period_from=period_from,
            period_to=period_to, meter_code=meter_code.strip() if meter_code else None, household_id=household_pk,
            account_no=account,
        )
        return await paginate_query(info.context, query, page, MeterReplacementType.from_page_row,
                                    count=selects(info, "totalCount"))

    @strawberry.field(permission_classes=[Requires("archives:read")], description="One concentrator in your scope.")
    async def concentrator(self, info: Info, id: strawberry.ID) -> ConcentratorType:
        found = await fetch_concentrator(info.context, decode_id(id, "Concentrator"))
        if found is None:
            raise NotFound(field="id")
        return found

    @strawberry.field(permission_classes=[Requires("archives:read")], description="Meter models (型号), a shared catalog.")
    async def meter_models(
        self, info: Info, first: int | None = None, after: str | None = None, last: int | None = None,
        before: str | None = None, search: str | None = None,
    ) -> Connection[MeterModelType]:
        page = PageRequest.from_args(first, after, last, before)
        async with info.context.read() as session:
            return await paginate(session, service.meter_models_statement(search=search), page,
                                  lambda row: MeterModelType.from_row(row[0]), count=selects(info, "totalCount"))

    @strawberry.field(permission_classes=[Requires("archives:read")],
                      description="The collectors (采集器) of a concentrator in your scope, by address.")
    async def collectors(self, info: Info, concentrator_id: strawberry.ID) -> list[CollectorType]:
        found = await fetch_concentrator(info.context, decode_id(concentrator_id, "Concentrator", field="concentratorId"))
        if found is None:
            raise NotFound(field="concentratorId")
        collectors = await info.context.loader(CollectorsByConcentratorIdLoader).load(found.pk)
        return [CollectorType.from_row(c) for c in collectors]

    @strawberry.field(
        permission_classes=[Requires("archives:read")],
        description="A relative URL that downloads the households in your scope, filtered like `households` "
        "(area subtree, status, customer type, search), as .xlsx for 5 minutes without an Authorization header "
        "(the link is signed for you and this filter only).",
    )
    async def household_export_url(
        self, info: Info, area_id: strawberry.ID | None = None,
        status: HouseholdStatusEnum | None = None,  # type: ignore[valid-type]
        search: str | None = None,
        customer_type: CustomerTypeEnum | None = None,  # type: ignore[valid-type]
        has_meter: bool | None = None,
    ) -> str:
        return _signed_export_url(info.context, HOUSEHOLD_EXPORT_PATH, area_id=area_id, search=search, filters={
            "status": status.value if status is not None else None,
            "customerType": customer_type.value if customer_type is not None else None,
            "hasMeter": None if has_meter is None else ("true" if has_meter else "false"),
        })

    @strawberry.field(
        permission_classes=[Requires("archives:read")],
        description="A signed .xlsx download of the meters in your scope, filtered like `meters` (5 minutes).",
    )
    async def meter_export_url(
        self, info: Info, area_id: strawberry.ID | None = None,
        status: MeterStatusEnum | None = None,  # type: ignore[valid-type]
        meter_type: MeterTypeEnum | None = None,  # type: ignore[valid-type]
        kind: MeterKindEnum | None = None,  # type: ignore[valid-type]
        concentrator_id: strawberry.ID | None = None,
        search: str | None = None,
        assigned: bool | None = None,
        model_id: strawberry.ID | None = None,
    ) -> str:
        if concentrator_id:
            decode_id(concentrator_id, "Concentrator", field="concentratorId")
        if model_id:
            decode_id(model_id, "MeterModel", field="modelId")
        return _signed_export_url(info.context, METERS.export_path, area_id=area_id, search=search, filters={
            "status": status.value if status is not None else None,
            "meterType": meter_type.value if meter_type is not None else None,
            "kind": kind.value if kind is not None else None,
            "concentratorId": concentrator_id,
            "assigned": None if assigned is None else ("true" if assigned else "false"),
            "modelId": model_id,
        })

    @strawberry.field(
        permission_classes=[Requires("archives:read")],
        description="A signed .xlsx download of the concentrators in your scope (5 minutes).",
    )
    async def concentrator_export_url(
        self, info: Info, area_id: strawberry.ID | None = None,
        status: DeviceStatusEnum | None = None,  # type: ignore[valid-type]
        connection: ConnectionKindEnum | None = None,  # type: ignore[valid-type]
        search: str | None = None,
    ) -> str:
        return _signed_export_url(info.context, CONCENTRATORS.export_path, area_id=area_id, search=search, filters={
            "status": status.value if status is not None else None,
            "connection": connection.value if connection is not None else None,
        })

    @strawberry.field(
        permission_classes=[Requires("archives:read")],
        description="A signed .xlsx download of meter assignments (表计分配) of households in your scope (5 minutes).",
    )
    async def assignment_export_url(
        self, info: Info, area_id: strawberry.ID | None = None, current: bool | None = None, search: str | None = None,
    ) -> str:
        return _signed_export_url(info.context, ASSIGNMENTS.export_path, area_id=area_id, search=search, filters={
            "current": None if current is None else ("true" if current else "false"),
        })

    @strawberry.field(
        permission_classes=[Requires("archives:read")],
        description="A signed .xlsx download of the area tree in your scope below the companies, each row naming its "
        "parent by code, as `/imports/areas` reads it back (5 minutes).",
    )
    async def area_export_url(self, info: Info, area_id: strawberry.ID | None = None, search: str | None = None) -> str:
        return _signed_export_url(info.context, AREAS.export_path, area_id=area_id, search=search, filters={})


def _signed_export_url(
    context: Context, path: str, *, area_id: str | None, search: str | None, filters: dict[str, str | None]
) -> str:
    """A relative URL of ``path`` with these filters, signed for the caller for 5 minutes."""
    params: dict[str, str] = {}
    if area_id:
        decode_id(area_id, "Area", field="areaId")  # a malformed id is NOT_FOUND here, not at download time
        params["areaId"] = area_id
    params.update({name: value for name, value in filters.items() if value is not None})
    if search and "\x00" in search:
        raise BadUserInput("文本不能包含 NUL 字符", "Text must not contain NUL characters", field="search")
    if search and search.strip():
        params["search"] = search.strip()
    return context.signed_link(path, params)

# The node(id:) fetchers of this module's types (collected by the root schema).
NODES = {
    "Area": fetch_area,
    "Household": fetch_household,
    "Meter": fetch_meter,
    "MonitoringStation": fetch_station,
    "Concentrator": fetch_concentrator,
    "MeterModel": fetch_meter_model,
    "Collector": fetch_collector,
}
