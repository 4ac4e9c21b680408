"""What auth's mutations share: the policy and the throttle memo the app built, the plain
ok payload, and the conversion of global ids in inputs."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.types import Info

from backend.auth import service
from backend.auth.ratelimit import OverLimitMemo
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.relay import decode_id


def _policy(info: Info) -> service.AuthPolicy:
    """The policy create_app built once (a context made elsewhere builds its own)."""
    context: Context = info.context
    policy = context.services.get("auth_policy")
    return policy if policy is not None else service.AuthPolicy.from_settings(context.settings)  # type: ignore[no-any-return]


def _over_limit(info: Info) -> OverLimitMemo | None:
    """The app's memo of throttle keys already refused this minute (create_app builds one;
    without it every throttle hit asks the database)."""
    context: Context = info.context
    return context.services.get("over_limit")  # type: ignore[no-any-return]


@strawberry.type
class OkPayload:
    ok: bool
    errors: list[UserError]


def _unit_id(value: strawberry.ID | None) -> int | None:
    return decode_id(value, "Area", field="unitId") if value else None


def _ids(values: list[strawberry.ID] | None, type_name: str, field: str) -> frozenset[int] | None:
    if values is None:
        return None
    return frozenset(decode_id(value, type_name, field=field) for value in values)


def _ok(result: Any, errors: list[UserError]) -> OkPayload:
    return OkPayload(ok=not errors, errors=errors)
