"""Writing, reading and purging the operation log.

Every mutation writes one entry in its own transaction when it succeeds, and in a fresh
transaction after the rollback when it is refused, so a refusal leaves exactly one row.

Each entry belongs to a unit (``area_id``): the area of the operation's subject when the
caller names one (the household, meter, user … it changed), else the acting staff user's
unit. Anonymous, resident and API-client entries without a subject area have none and
are read only with whole-tree scope: failed-login usernames and residents' phone numbers
stay with the company's administrators. The log screen and its export show an entry only
when its unit lies in the reader's scope (backend.auth.scope), inside the query.

What an entry keeps of the input is bounded (:func:`bounded`): inputs are the caller's
choice, the log is kept for a year and read by people. Entries older than the retention
(``SHUIWU_AUDIT_RETENTION_DAYS``) are deleted by :func:`purge_operation_log`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Select, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.audit.models import AuditEntry
from backend.auth.models import StaffUser
from backend.auth.principal import Principal
from backend.auth.scope import unit_visible
from backend.settings import Settings

REDACTED = "***"
# Input keys whose values never reach the log (matched as substrings, case-insensitive).
# One-time codes are not listed: the code-login mutations pass an audit input without
# them, and "code" would blank every meter, area and region code in the log.
SECRET_KEYS = ("password", "secret", "token", "apikey", "api_key")
# Identity numbers are kept recognisable but not whole (3301**********1234).
MASKED_KEYS = ("idnumber", "id_number")


# What one entry keeps of an input: strings cut to MAX_LOGGED_CHARS, lists and objects to
# MAX_LOGGED_ITEMS, nesting to MAX_LOGGED_DEPTH, and the whole payload to
# MAX_LOGGED_PAYLOAD_BYTES of JSON (past that only its shape is kept). Each cut says so.
MAX_LOGGED_CHARS = 500
MAX_LOGGED_ITEMS = 50
MAX_LOGGED_DEPTH = 6
MAX_LOGGED_PAYLOAD_BYTES = 8 * 1024
MAX_SUMMARY_CHARS = 1000
_ACTOR_NAME_CHARS = 100  # the column's width


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…[截断 truncated {len(text) - limit}]"


def bounded(payload: Any, *, chars: int = MAX_LOGGED_CHARS, depth: int = 0) -> Any:
    """A copy of ``payload`` (already plain JSON values) within the limits above."""
    if isinstance(payload, str):
        return _cut(payload, chars)
    if depth >= MAX_LOGGED_DEPTH and isinstance(payload, Mapping | list | tuple):
        return "…[截断 truncated: nested too deep]"
    if isinstance(payload, Mapping):
        kept: dict[str, Any] = {}
        for index, (key, value) in enumerate(payload.items()):
            if index == MAX_LOGGED_ITEMS:
                kept["…"] = f"[截断 truncated {len(payload) - MAX_LOGGED_ITEMS} keys]"
                break
            kept[_cut(str(key), 100)] = bounded(value, chars=chars, depth=depth + 1)
        return kept
    if isinstance(payload, list | tuple):
        items = [bounded(value, chars=chars, depth=depth + 1) for value in payload[:MAX_LOGGED_ITEMS]]
        if len(payload) > MAX_LOGGED_ITEMS:
            items.append(f"…[截断 truncated {len(payload) - MAX_LOGGED_ITEMS} items]")
        return items
    return payload


def logged_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` redacted and bounded as an entry stores it, at most
    :data:`MAX_LOGGED_PAYLOAD_BYTES` of JSON."""
    clean: dict[str, Any] = bounded(redact(dict(payload)))
    if len(orjson.dumps(clean)) <= MAX_LOGGED_PAYLOAD_BYTES:
        return clean
    shorter: dict[str, Any] = bounded(clean, chars=MAX_LOGGED_CHARS // 10)
    size = len(orjson.dumps(shorter))
    if size <= MAX_LOGGED_PAYLOAD_BYTES:
        return shorter
    return {"…": f"[截断 truncated: {size} bytes of input]", "keys": [_cut(str(key), 100) for key in list(clean)[:20]]}


def _mask(value: Any) -> Any:
    if not isinstance(value, str):
        return redact(value)  # null, or strawberry's UNSET for a field left out
    return masked_id_number(value)


def masked_id_number(value: str) -> str:
    """An identity number as an entry's input keeps it (3301**********1234)."""
    if len(value) <= 8:
        return REDACTED if value else value
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def redact(payload: Any) -> Any:
    """A copy of ``payload`` with the values of secret-looking keys replaced and identity
    numbers masked."""
    if isinstance(payload, Mapping):
        clean: dict[str, Any] = {}
        for key, value in payload.items():
            lowered = str(key).lower()
            if any(marker in lowered for marker in SECRET_KEYS) and value is not None:
                clean[str(key)] = REDACTED
            elif any(marker in lowered for marker in MASKED_KEYS):
                clean[str(key)] = _mask(value)
            else:
                clean[str(key)] = redact(value)
        return clean
    if isinstance(payload, list | tuple):
        return [redact(item) for item in payload]
    if isinstance(payload, str | int | float | bool) or payload is None:
        return payload
    return str(payload)


async def record_operation(
    session: AsyncSession,
    *,
    at: datetime,
    actor: Principal | None,
    module: str,
    action: str,
    summary: str,
    payload: Mapping[str, Any],
    success: bool,
    ip: str | None,
    request_id: str | None,
    actor_name: str | None = None,
    subject_area_id: int | None = None,
) -> AuditEntry:
    """Append one entry; ``payload`` is redacted and bounded here (:func:`logged_payload`),
    so callers pass the raw input; the summary and names are cut to their limits too.
    The entry's unit is ``subject_area_id``, else the acting staff user's unit."""
    area_id = subject_area_id
    if area_id is None and actor is not None and actor.is_staff:
        area_id = (await session.execute(select(StaffUser.area_id).where(StaffUser.id == actor.id))).scalar_one_or_none()  # type: ignore[call-overload,arg-type]
    entry = AuditEntry(
        at=at,
        actor_kind=actor.kind.value if actor else "anonymous",
        actor_id=actor.id if actor else None,
        actor_name=(actor_name or (actor.name if actor else "匿名"))[:_ACTOR_NAME_CHARS],
        module=module,
        action=action,
        summary=_cut(summary, MAX_SUMMARY_CHARS),
        payload=logged_payload(payload),
        success=success,
        ip=ip,
        request_id=request_id,
        area_id=area_id,
    )
    session.add(entry)
    await session.flush()
    return entry


async def purge_operation_log(session: AsyncSession, *, older_than: datetime, batch: int = 10_000) -> int:
    """Delete up to ``batch`` entries from before ``older_than`` (oldest first); returns
    how many went. The caller commits, and calls again while it returns ``batch``."""
    oldest = select(col(AuditEntry.id)).where(col(AuditEntry.at) < older_than).order_by(col(AuditEntry.at)).limit(batch)
    result = await session.execute(delete(AuditEntry).where(col(AuditEntry.id).in_(oldest.scalar_subquery())))
    return int(getattr(result, "rowcount", 0))


def audit_query(
    *,
    scope_patterns: Sequence[str] | None,
    actor_id: int | None = None,
    actor_kind: str | None = None,
    module: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    success: bool | None = None,
    action: str | None = None,
    actor_name: str | None = None,
    search: str | None = None,
) -> Select[AuditEntry]:
    """The filtered, newest-first statement behind the log screen and its export: entries
    whose unit lies in ``scope_patterns`` (``None``: all, for system callers).

    ``actor_name`` is the 操作用户 as shown (a staff user's name, or the username a refused
    login tried); ``search`` finds text anywhere in 日志内容, case-insensitively, taken
    literally (``%`` and ``_`` are not wildcards)."""
    statement = select(AuditEntry).where(unit_visible(AuditEntry.area_id, scope_patterns))
    if actor_id is not None:
        statement = statement.where(AuditEntry.actor_id == actor_id)  # type: ignore[arg-type]
    if actor_kind is not None:
        statement = statement.where(AuditEntry.actor_kind == actor_kind)  # type: ignore[arg-type]
    if module is not None:
        statement = statement.where(AuditEntry.module == module)  # type: ignore[arg-type]
    if since is not None:
        statement = statement.where(AuditEntry.at >= since)  # type: ignore[arg-type]
    if until is not None:
        statement = statement.where(AuditEntry.at < until)  # type: ignore[arg-type]
    if success is not None:
        statement = statement.where(AuditEntry.success == success)  # type: ignore[arg-type]
    if action is not None:
        statement = statement.where(AuditEntry.action == action)  # type: ignore[arg-type]
    if actor_name is not None:
        statement = statement.where(AuditEntry.actor_name == actor_name)  # type: ignore[arg-type]
    if search:
        statement = statement.where(col(AuditEntry.summary).icontains(search, autoescape=True))
    return statement.order_by(AuditEntry.at.desc(), AuditEntry.id.desc())  # type: ignore[attr-defined,union-attr]


def offered(settings: Settings) -> dict[str, Any]:
    """What audit offers the layers before it (``Domain.services``): the log's writer."""
    return {"record_operation": record_operation}
