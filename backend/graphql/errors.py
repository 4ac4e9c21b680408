"""The error contract (DESIGN.md, "GraphQL errors").

- Business refusals and validation go into a mutation payload's ``errors: [UserError!]!``.
- Request-level refusals (unauthenticated, forbidden, not found, limits) are top-level
  errors with ``extensions.code`` and ``extensions.messageEn``.
- Anything unexpected is masked as ``INTERNAL`` with the request id, and logged with it.
"""

from __future__ import annotations

import logging
from typing import Any

import strawberry
from graphql import GraphQLError

from backend.db import limit_refusal
from backend.errors import DomainError, ErrorCode, ValidationFailed

log = logging.getLogger("shuiwu.graphql")

ErrorCodeEnum = strawberry.enum(ErrorCode, name="ErrorCode", description="Every error code of the API.")


@strawberry.type(description="A refusal a form can show next to the field at fault.")
class UserError:
    field: str | None = strawberry.field(description="The input field at fault; null for the whole request.")
    code: ErrorCodeEnum  # type: ignore[valid-type]
    message: str = strawberry.field(description="Chinese message for the user.")
    message_en: str = strawberry.field(description="English message.")

    @classmethod
    def from_domain(cls, error: DomainError) -> list[UserError]:
        if isinstance(error, ValidationFailed):
            return [item for nested in error.errors for item in cls.from_domain(nested)]
        return [cls(field=error.field, code=error.code, message=error.message, message_en=error.message_en)]


class RequestError(GraphQLError):
    """A top-level error with a stable code (``extensions.code``)."""

    def __init__(self, code: ErrorCode, message: str, message_en: str, **extensions: Any) -> None:
        super().__init__(message, extensions={"code": code.value, "messageEn": message_en, **extensions})


def request_error(error: DomainError) -> RequestError:
    return RequestError(error.code, error.message, error.message_en)


def format_error(error: GraphQLError, request_id: str) -> dict[str, Any]:
    """Turn one execution error into its response form, masking the unexpected."""
    original = error.original_error
    # graphql-core wraps resolver exceptions once per level; find the root cause.
    while isinstance(original, GraphQLError) and original.original_error is not None:
        original = original.original_error
    formatted: dict[str, Any] = {"message": error.message}
    if error.locations:
        formatted["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path:
        formatted["path"] = error.path
    cut = limit_refusal(original) if original is not None else None
    if cut is not None:
        log.warning("statement cut at a database limit (%s, request %s)", cut.code, request_id,
                    extra={"request_id": request_id})
        original = cut
    if isinstance(original, DomainError):
        formatted["message"] = original.message
        formatted["extensions"] = {"code": original.code.value, "messageEn": original.message_en}
        if original.field:
            formatted["extensions"]["field"] = original.field
        return formatted
    if isinstance(original, GraphQLError):
        error = original
        original = None
    if original is None:
        # Syntax, validation, variable coercion and our own RequestErrors.
        extensions = dict(error.extensions or {})
        extensions.setdefault("code", ErrorCode.BAD_USER_INPUT.value)
        extensions.setdefault("messageEn", error.message)
        formatted["message"] = error.message
        formatted["extensions"] = extensions
        return formatted
    log.error(
        "unexpected error in %s (request %s)",
        ".".join(str(part) for part in error.path or ()),
        request_id,
        exc_info=original,
        extra={"request_id": request_id},
    )
    formatted["message"] = "服务器内部错误"
    formatted["extensions"] = {
        "code": ErrorCode.INTERNAL.value,
        "messageEn": "Internal error",
        "requestId": request_id,
    }
    return formatted
