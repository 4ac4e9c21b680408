"""GraphQL for the operation log (操作日志): the log screen and its Excel download link."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from backend.audit.http import (
    EXPORT_PATH,
    MAX_ACTION_CHARS,
    MAX_ACTOR_NAME_CHARS,
    MAX_SEARCH_CHARS,
    ExportFilter,
    text_filter,
)
from backend.audit.models import AuditEntry
from backend.audit.service import audit_query
from backend.auth.catalog import log_names, module_name, operation_name
from backend.graphql.context import Context
from backend.graphql.pagination import Connection, PageRequest, paginate
from backend.graphql.periods import FROM_INSTANT, TO_INSTANT, deprecated_alias_reason, one_of_aliases
from backend.graphql.permissions import Requires
from backend.graphql.relay import Node, decode_id, encode_id


class AuditActorKind(StrEnum):
    staff = "staff"
    resident = "resident"
    client = "client"
    # A refused login or token request has no principal yet.
    anonymous = "anonymous"
    # Automatic work and the operator's commands (shuiwu privacy export|erase): 系统.
    system = "system"


AuditActorKindEnum = strawberry.enum(AuditActorKind, name="AuditActorKind", description="员工 / 住户 / 第三方 / 匿名 / 系统")


@strawberry.type(name="AuditEntry", description="One line of the operation log (操作日志).")
class AuditEntryType(Node):
    at: datetime = strawberry.field(description="时间")
    actor_kind: AuditActorKindEnum  # type: ignore[valid-type]
    actor_id: strawberry.ID | None = strawberry.field(description="The StaffUser's global id when staff acted.")
    actor_name: str = strawberry.field(description="操作用户")
    module: str = strawberry.field(description="Module code (a menu code, or auth / resident).")
    module_name: str = strawberry.field(description="操作模块")
    action: str = strawberry.field(description="The operation's code (a mutation's name, or an HTTP route's).")
    action_name: str = strawberry.field(description="操作 (登录, 分配角色, 分配权限 …).")
    summary: str = strawberry.field(description="日志内容, ending in its result (成功 / 失败 (…) / 拒绝 (…)).")
    payload: JSON = strawberry.field(description="The operation's input; secrets are replaced by ***.")  # type: ignore[valid-type]
    success: bool
    ip: str | None = strawberry.field(description="IP地址")
    request_id: str | None = strawberry.field(description="The request id, to find the request in the server logs.")

    @classmethod
    def from_row(cls, entry: AuditEntry) -> AuditEntryType:
        assert entry.id is not None
        is_staff = entry.actor_kind == AuditActorKind.staff.value and entry.actor_id is not None
        return cls(
            id=encode_id("AuditEntry", entry.id),
            at=entry.at,
            actor_kind=AuditActorKind(entry.actor_kind),
            actor_id=encode_id("StaffUser", entry.actor_id) if is_staff and entry.actor_id is not None else None,
            actor_name=entry.actor_name,
            module=entry.module,
            module_name=module_name(entry.module),
            action=entry.action,
            action_name=operation_name(entry.action),
            summary=entry.summary,
            payload=entry.payload,  # type: ignore[arg-type]
            success=entry.success,
            ip=entry.ip,
            request_id=entry.request_id,
        )


@strawberry.input(description="Filters of the log screen; all of them narrow the list together.")
class AuditLogFilter:
    actor_id: strawberry.ID | None = strawberry.field(default=None, description="A StaffUser's global id.")
    actor_kind: AuditActorKindEnum | None = None  # type: ignore[valid-type]
    module: str | None = strawberry.field(default=None, description="Module code, e.g. auth, system, audit.")
    from_: datetime | None = strawberry.field(default=None, name="from", description=f"Entries (时间) {FROM_INSTANT}.")
    to: datetime | None = strawberry.field(default=None, description=f"Entries (时间) {TO_INSTANT}.")
    # The log's old names, the only instant range not called from / to (docs/periods.md).
    since: datetime | None = strawberry.field(default=None, description=f"Entries {FROM_INSTANT}.",
                                              deprecation_reason=deprecated_alias_reason("from"))
    until: datetime | None = strawberry.field(default=None, description=f"Entries {TO_INSTANT}.",
                                              deprecation_reason=deprecated_alias_reason("to"))
    success: bool | None = None
    action: str | None = strawberry.field(default=None, description="操作: an action code of auditOperations.")
    actor_name: str | None = strawberry.field(
        default=None, description="操作用户 exactly as shown: a user's name, or the username a refused login tried.")
    search: str | None = strawberry.field(default=None, description="Text anywhere in 日志内容 (case-insensitive, literal).")

    def to_export_filter(self) -> ExportFilter:
        kind = self.actor_kind
        return ExportFilter(
            action=text_filter(self.action, "action", MAX_ACTION_CHARS, field="filter.action"),
            actor_name=text_filter(self.actor_name, "actorName", MAX_ACTOR_NAME_CHARS, field="filter.actorName"),
            search=text_filter(self.search, "search", MAX_SEARCH_CHARS, field="filter.search"),
            actor_id=decode_id(self.actor_id, "StaffUser", field="actorId") if self.actor_id else None,
            actor_kind=kind.value if kind is not None else None,
            module=self.module or None,
            since=one_of_aliases(self.from_, self.since, name="from", alias_name="since", prefix="filter."),
            until=one_of_aliases(self.to, self.until, name="to", alias_name="until", prefix="filter."),
            success=self.success,
        )


@strawberry.type(description="A name the operation log shows: a module (操作模块) or an operation (操作).")
class AuditName:
    code: str
    name: str
    name_en: str


def _filter_of(value: AuditLogFilter | None) -> ExportFilter:
    return value.to_export_filter() if value is not None else ExportFilter()


async def _fetch_audit_entry(context: Any, pk: int) -> AuditEntryType | None:
    if context.principal is None or not context.principal.has("audit:read"):
        return None
    statement = audit_query(scope_patterns=context.principal.scope_patterns()).where(AuditEntry.id == pk)  # type: ignore[arg-type]
    async with context.read() as session:
        entry = (await session.execute(statement)).scalars().first()
    return AuditEntryType.from_row(entry) if entry else None




@strawberry.type
class Query:
    @strawberry.field(
        permission_classes=[Requires("audit:read")],
        description="The operation log (操作日志), newest first: the entries whose unit (the area of what was "
        "changed, else the acting user's unit) lies in your scope; entries without one (anonymous logins, "
        "residents) only for a scope over the whole company."
    )
    async def audit_logs(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        filter: AuditLogFilter | None = None,
    ) -> Connection[AuditEntryType]:
        page = PageRequest.from_args(first, after, last, before)
        statement = audit_query(scope_patterns=info.context.caller.scope_patterns(), **_filter_of(filter).query_arguments())
        async with info.context.read() as session:
            return await paginate(session, statement, page, lambda row: AuditEntryType.from_row(row[0]))

    @strawberry.field(permission_classes=[Requires("audit:read")],
                      description="The log screen's 操作模块 choices: every module entries are written under.")
    def audit_modules(self) -> list[AuditName]:
        return [AuditName(code=m.code, name=m.name, name_en=m.name_en) for m in log_names().modules.values()]

    @strawberry.field(permission_classes=[Requires("audit:read")],
                      description="The log screen's 操作 choices, optionally of one module.")
    def audit_operations(self, module: str | None = None) -> list[AuditName]:
        return [AuditName(code=o.action, name=o.name, name_en=o.name_en) for o in log_names().operations.values()
                if module is None or o.module == module]

    @strawberry.field(
        permission_classes=[Requires("audit:export")],
        description="A relative URL that downloads the filtered log as .xlsx for 5 minutes, without an "
        "Authorization header (the link is signed for you and this filter only).",
    )
    def audit_log_export_url(self, info: Info, filter: AuditLogFilter | None = None) -> str:
        context: Context = info.context
        params = _filter_of(filter).to_params()
        return context.signed_link(EXPORT_PATH, params)

# The node(id:) fetchers of this module's types (collected by the root schema).
NODES = {
    "AuditEntry": _fetch_audit_entry,
}
