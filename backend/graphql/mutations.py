"""How every mutation runs: one transaction, one audit entry, typed refusals.

``run_mutation`` opens the transaction, calls the service work, writes the audit entry in
the same transaction and commits. A :class:`DomainError` rolls everything back; the
refusal is then audited in a fresh transaction (with any ``on_refusal`` bookkeeping, such
as the failed-login counter) and returned as payload ``errors``. A refusal that says it is
not audited (``audited = False``: a throttle refusal repeated from memory, whose first one
this minute was) writes nothing. Request-level refusals
(not logged in, forbidden, rate limited) become top-level errors instead.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Awaitable, Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, TypeVar

from graphql.execution.values import get_argument_values
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.audit.service import record_operation
from backend.auth.catalog import log_names, module_name, module_of
from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.errors import REQUEST_LEVEL_CODES, DomainError, ErrorCode
from backend.graphql.context import Context
from backend.graphql.errors import UserError

ResultT = TypeVar("ResultT")
PayloadT = TypeVar("PayloadT")

# Request-level refusals raised by a mutation's work still go top-level, except NOT_FOUND
# and BAD_USER_INPUT, which a form shows next to a field.
_TOP_LEVEL = REQUEST_LEVEL_CODES - {ErrorCode.NOT_FOUND, ErrorCode.BAD_USER_INPUT}


class ConcurrentDuplicate(DomainError):
    code = ErrorCode.DUPLICATE
    message = "记录已存在 (可能刚被他人创建), 请刷新后重试"
    message_en = "Already exists (perhaps just created by someone else); refresh and try again"


def plain(value: Any) -> Any:
    """Strawberry inputs and enums as JSON-ready values for the audit payload."""
    # Enums first: strawberry.enum marks the enum class itself as a strawberry type.
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if hasattr(value, "__strawberry_definition__"):
        return {name: plain(item) for name, item in vars(value).items()}
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    if isinstance(value, datetime | date | Decimal):
        return str(value)
    return value


async def run_mutation(
    info: Info,
    *,
    action: str,
    module: str | None = None,
    describe: Callable[[ResultT | None], str],
    payload: Callable[[ResultT | None, list[UserError]], PayloadT],
    work: Callable[[AsyncSession], Awaitable[ResultT]],
    audit_input: Mapping[str, Any] | None = None,
    on_refusal: Callable[[AsyncSession, DomainError], Awaitable[None]] | None = None,
    actor: Callable[[ResultT], Principal | None] | None = None,
    before: Callable[[AsyncSession], Awaitable[object]] | None = None,
    claimed_name: str | None = None,
) -> PayloadT:
    """Run ``work`` in one transaction with its audit entry; see the module docstring.

    ``describe`` renders the 日志内容 sentence without its result ("为角色 收费员 分配菜单权限");
    ``actor`` names the actor when the caller was anonymous until the work succeeded
    (a login). ``before`` runs first in a transaction of its own that commits whatever
    follows: bookkeeping that must stand even when the work is refused, such as counting
    a login attempt before the password is checked. ``claimed_name`` is who an anonymous
    caller says they are (the username a login tried): the 操作用户 of its refusal, so
    failed logins are found by that name.

    The entry's module is the one ``action``'s declaration names (``Domain.operations``);
    ``module`` is for an action no domain declares.
    """
    context: Context = info.context
    module = entry_module(action, module)
    # The mutation's own resolved arguments, not the request's variables: variable names
    # are the client's choice (redaction goes by argument names), and a document may hold
    # several mutations.
    arguments = plain(audit_input if audit_input is not None else field_arguments(info))

    async def audit(session: AsyncSession, who: Principal | None, summary: str, success: bool, subject: object = None) -> None:
        await record_operation(
            session, at=utcnow(), actor=who, module=module, action=action, summary=summary,
            payload=arguments, success=success, ip=context.ip, request_id=context.request_id,
            subject_area_id=subject_area_id(subject), actor_name=claimed_name[:64] if who is None and claimed_name else None,
        )

    try:
        if before is not None:
            async with context.write() as session:
                await before(session)
        try:
            async with context.write() as session:
                result = await work(session)
                who = actor(result) if actor is not None else context.principal
                await audit(session, who, f"{describe(result)}: 成功", True, result)
        except IntegrityError as clash:
            # A unique key taken by a concurrent request between a service's check and its
            # insert: the same refusal the check would have given, not a crash.
            if getattr(clash.orig, "sqlstate", None) != "23505":
                raise
            raise ConcurrentDuplicate() from None
    except DomainError as refusal:
        if refusal.audited or on_refusal is not None:
            async with context.write() as session:
                if on_refusal is not None:
                    await on_refusal(session, refusal)
                if refusal.audited:
                    await audit(session, context.principal, f"{describe(None)}: 失败 ({refusal.message})", False)
        if refusal.code in _TOP_LEVEL:
            raise
        return payload(None, UserError.from_domain(refusal))
    except Exception:
        # Unexpected: the client sees INTERNAL with the request id; the log keeps a row.
        async with context.write() as session:
            await audit(session, context.principal, f"{describe(None)}: 失败 (内部错误 {context.request_id})", False)
        raise
    return payload(result, [])


async def record_afterwards(
    info: Info, session: AsyncSession, *, action: str, summary: str, success: bool, module: str | None = None,
) -> None:
    """A second entry for a mutation whose outcome changed after its own entry was
    written (a binding whose code then could not be sent): same actor, module, input,
    address and request id as the first, in the caller's transaction."""
    context: Context = info.context
    await record_operation(
        session, at=utcnow(), actor=context.principal, module=entry_module(action, module), action=action,
        summary=summary, payload=plain(field_arguments(info)), success=success, ip=context.ip,
        request_id=context.request_id,
    )


def entry_module(action: str, module: str | None) -> str:
    """The module an entry of ``action`` is written under: its declaration's, else ``module``."""
    declared = log_names().operations.get(action)
    if declared is not None:
        return declared.module
    if module is None:
        raise ValueError(f"action {action} is not declared in any Domain.operations and names no module")
    return module


def subject_area_id(result: object) -> int | None:
    """The area of what a mutation changed, when it has one (a household, meter, staff
    user, role …): the unit its audit entry belongs to (else the actor's)."""
    area_id = getattr(result, "area_id", None)
    return area_id if isinstance(area_id, int) and not isinstance(area_id, bool) else None


def field_arguments(info: Info) -> dict[str, Any]:
    """The current field's arguments as the client sent them, coerced (GraphQL names)."""
    raw = info._raw_info
    definition = raw.parent_type.fields[raw.field_name]
    # strawberry hands resolvers the plain coerced dict; graphql-core's helper reads it
    # through a VariableValues-shaped object (``coerced`` and ``sources``).
    variables = SimpleNamespace(coerced=raw.variable_values or {}, sources={})
    return dict(get_argument_values(definition, raw.field_nodes[0], variables))  # type: ignore[arg-type]


async def audit_refusal(context: Context, field_name: str, permission: str, arguments: Mapping[str, Any]) -> None:
    """Audit a mutation refused for lack of ``permission`` (nothing else was written)."""
    module = entry_module(field_name, module_of(permission))
    async with context.write() as session:
        await record_operation(
            session,
            at=utcnow(),
            actor=context.principal,
            module=module,
            action=field_name,
            summary=f"{module_name(module)} {field_name}: 拒绝 (缺少权限 {permission})",
            payload=plain(arguments),
            success=False,
            ip=context.ip,
            request_id=context.request_id,
        )
