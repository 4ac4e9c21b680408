"""What every archive mutation shares: the permission, the transaction runner, and
the conversions of unset and optional inputs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id

MANAGE = [Requires("archives:manage")]
PayloadT = TypeVar("PayloadT")


def _keep(value: Any) -> Any:
    return service.KEEP if value is strawberry.UNSET else value


def _opt_id(value: Any, type_name: str, field: str) -> Any:
    if value is strawberry.UNSET:
        return service.KEEP
    return decode_id(value, type_name, field=field) if value is not None else None


def _reading(value: str | None, field: str) -> Decimal | None:
    return service.parse_reading(value, field=field) if value is not None else None


def _scope(info: Info) -> list[str]:
    return info.context.caller.scope_patterns()  # type: ignore[no-any-return]

async def _run(info: Info, action: str, describe: Callable[[Any], str], payload: Callable[[Any, list[UserError]], PayloadT],
               work: Callable[[AsyncSession], Awaitable[Any]]) -> PayloadT:
    return await run_mutation(info, module="archives", action=action, describe=describe, payload=payload, work=work)
