"""GraphQL of query schemes (模板/查询方案), the column picker and readings exports:
``screenColumns``, ``querySchemes``, ``readingsExportUrl``, ``saveQueryScheme``,
``deleteQueryScheme``.

Which permission applies depends on the ``screen`` argument (each screen has its own), so
these fields are declared ``Authenticated`` and check the screen's permission first thing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from backend.auth.principal import Principal
from backend.errors import DomainError, ErrorCode, Forbidden
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Authenticated
from backend.graphql.relay import Node, decode_id, encode_id
from backend.readings.schemes import service
from backend.readings.schemes.models import QueryScheme
from backend.readings.screens import Screen, ScreenKind, choose_columns, export_params, export_path, get_screen

ScreenKindEnum = strawberry.enum(
    ScreenKind, name="ScreenKind",
    description="实时数据 / 历史数据 / 用水统计 / 台账 / 对比 / 数据监测 / 异常水表",
)


def _screen_for(principal: Principal, kind: ScreenKind) -> Screen:
    """The registered screen, when the caller holds its permission (FORBIDDEN otherwise)."""
    screen = get_screen(ScreenKind(kind))
    if not principal.has(screen.permission):
        raise Forbidden()
    return screen


def _staff_id(principal: Principal) -> int | None:
    return principal.id if principal.is_staff else None


@strawberry.type(description="A column a screen offers (the column picker).")
class ScreenColumnType:
    key: str
    title: str = strawberry.field(description="Chinese header")
    title_en: str
    default: bool = strawberry.field(description="Shown when no scheme chooses columns.")


@strawberry.type(name="QueryScheme", description="A saved choice of columns and filters for a screen (查询方案).")
class QuerySchemeType(Node):
    screen: ScreenKindEnum  # type: ignore[valid-type]
    name: str
    columns: list[str] = strawberry.field(description="Column keys in display order; empty: the screen's default.")
    filters: JSON = strawberry.field(description="The screen's filter object, as its query takes it.")  # type: ignore[valid-type]
    is_default: bool
    shared: bool = strawberry.field(description="Visible to everyone who may open the screen.")
    mine: bool = strawberry.field(description="Whether you own it (only the owner may change or delete it).")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, scheme: QueryScheme, principal: Principal) -> QuerySchemeType:
        assert scheme.id is not None and scheme.created_at is not None and scheme.updated_at is not None
        return cls(id=encode_id("QueryScheme", scheme.id), screen=ScreenKind(scheme.screen), name=scheme.name,
                   columns=list(scheme.columns), filters=dict(scheme.filters),  # type: ignore[arg-type]
                   is_default=scheme.is_default,
                   shared=scheme.shared, mine=scheme.owner_user_id == _staff_id(principal),
                   created_at=scheme.created_at, updated_at=scheme.updated_at)


async def fetch_query_scheme(context: Any, pk: int) -> QuerySchemeType | None:
    principal: Principal | None = context.principal
    if principal is None:
        return None
    async with context.read() as session:
        try:
            scheme = await service.get_query_scheme(session, scheme_id=pk, user_id=_staff_id(principal))
        except DomainError:
            return None
    if not principal.has(get_screen(ScreenKind(scheme.screen)).permission):
        return None
    return QuerySchemeType.from_row(scheme, principal)




@strawberry.input
class SaveQuerySchemeInput:
    screen: ScreenKindEnum  # type: ignore[valid-type]
    name: str = strawberry.field(description="Saving under an existing name of yours overwrites that scheme.")
    columns: list[str] = strawberry.field(default_factory=list, description="Column keys in display order.")
    # Optional rather than defaulting to {}: an object default has no GraphQL literal form,
    # so introspection (GraphiQL) could not print it.
    filters: JSON | None = strawberry.field(default=None, description="The screen's filters; none when omitted.")  # type: ignore[valid-type]
    is_default: bool = False
    shared: bool = False


@strawberry.type
class SaveQuerySchemePayload:
    scheme: QuerySchemeType | None
    errors: list[UserError]


@strawberry.type
class DeleteQuerySchemePayload:
    deleted_id: strawberry.ID | None
    errors: list[UserError]


@strawberry.type
class Query:
    @strawberry.field(permission_classes=[Authenticated],
                      description="The columns a screen offers, for the column picker (needs the screen's permission).")
    async def screen_columns(self, info: Info, screen: ScreenKindEnum) -> list[ScreenColumnType]:  # type: ignore[valid-type]
        found = _screen_for(info.context.caller, screen)
        return [ScreenColumnType(key=c.key, title=c.title, title_en=c.title_en, default=c.key in found.default_columns)
                for c in found.columns]

    @strawberry.field(permission_classes=[Authenticated],
                      description="Your schemes of a screen, then the ones others shared (needs the screen's permission).")
    async def query_schemes(self, info: Info, screen: ScreenKindEnum) -> list[QuerySchemeType]:  # type: ignore[valid-type]
        principal = info.context.caller
        _screen_for(principal, screen)
        async with info.context.read() as session:
            schemes = await service.list_query_schemes(session, screen=ScreenKind(screen), user_id=_staff_id(principal))
        return [QuerySchemeType.from_row(scheme, principal) for scheme in schemes]

    @strawberry.field(
        permission_classes=[Authenticated],
        description="A relative URL downloading the screen's rows in your scope as .xlsx, valid 5 minutes without an "
        "Authorization header. A scheme supplies columns and filters; `columns`/`filters` given here override it.",
    )
    async def readings_export_url(
        self, info: Info, screen: ScreenKindEnum,  # type: ignore[valid-type]
        scheme_id: strawberry.ID | None = None, columns: list[str] | None = None,
        filters: JSON | None = None,  # type: ignore[valid-type]
    ) -> str:
        principal = info.context.caller
        kind = ScreenKind(screen)
        found = _screen_for(principal, kind)
        chosen_columns: list[str] = []
        chosen_filters: dict[str, Any] = {}
        if scheme_id:
            async with info.context.read() as session:
                scheme = await service.get_query_scheme(
                    session, scheme_id=decode_id(scheme_id, "QueryScheme", field="schemeId"), user_id=_staff_id(principal))
            if ScreenKind(scheme.screen) is not kind:
                raise DomainError("方案不属于该页面", "The scheme belongs to another screen", field="schemeId",
                                  code=ErrorCode.BAD_USER_INPUT)
            chosen_columns, chosen_filters = list(scheme.columns), dict(scheme.filters)
        if columns is not None:
            chosen_columns = columns
        if filters is not None:
            if not isinstance(filters, dict):
                raise DomainError("筛选条件须为 JSON 对象", "filters must be a JSON object", field="filters",
                                  code=ErrorCode.BAD_USER_INPUT)
            chosen_filters = filters
        try:
            keys = [column.key for column in choose_columns(found, chosen_columns)]
        except DomainError as error:
            raise DomainError(error.message, error.message_en, field="columns", code=ErrorCode.BAD_USER_INPUT) from None
        params = export_params(keys, chosen_filters)
        path = export_path(kind)
        context: Context = info.context
        return context.signed_link(path, params)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=[Authenticated],
                         description="Save a scheme of yours (create, or overwrite the one with this name). Staff only.")
    async def save_query_scheme(self, info: Info, input: SaveQuerySchemeInput) -> SaveQuerySchemePayload:
        principal = info.context.caller

        async def work(session: Any) -> QueryScheme:
            _screen_for(principal, input.screen)
            if not principal.is_staff:
                raise Forbidden()
            return await service.save_query_scheme(
                session, owner_user_id=principal.id, screen=ScreenKind(input.screen), name=input.name,
                columns=input.columns, filters=input.filters or {},  # type: ignore[arg-type]
                is_default=input.is_default, shared=input.shared,
            )

        return await run_mutation(
            info, module="readings", action="saveQueryScheme",
            describe=lambda _: f"保存查询方案 {input.name}",
            payload=lambda scheme, errors: SaveQuerySchemePayload(
                scheme=QuerySchemeType.from_row(scheme, principal) if scheme is not None else None, errors=errors),
            work=work,
        )

    @strawberry.mutation(permission_classes=[Authenticated], description="Delete a scheme of yours.")
    async def delete_query_scheme(self, info: Info, id: strawberry.ID) -> DeleteQuerySchemePayload:
        principal = info.context.caller

        async def work(session: Any) -> QueryScheme:
            if not principal.is_staff:
                raise Forbidden()
            scheme = await service.delete_query_scheme(session, scheme_id=decode_id(id, "QueryScheme"), user_id=principal.id)
            _screen_for(principal, ScreenKind(scheme.screen))
            return scheme

        return await run_mutation(
            info, module="readings", action="deleteQueryScheme",
            describe=lambda scheme: f"删除查询方案 {scheme.name}" if scheme is not None else "删除查询方案",
            payload=lambda scheme, errors: DeleteQuerySchemePayload(deleted_id=id if scheme is not None else None,
                                                                    errors=errors),
            work=work,
        )

# The node(id:) fetchers of this module's types (collected by the root schema).
NODES = {
    "QueryScheme": fetch_query_scheme,
}
