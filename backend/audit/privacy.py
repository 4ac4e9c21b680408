"""The operation log and a resident's personal data (docs/privacy.md).

For ``shuiwu privacy export|erase``: the entries where the resident acted (their account
as the actor) or where their phone appears as a whole number (the actor's name, 日志内容,
or the logged input: a code sent to it, a household registered with it). The export
shows another actor's entries without their address (IP) and a staff actor as 工作人员.
Erasure keeps every entry, since the log is the record of who did what; it rewrites
those entries and the ones about the records the other domains name
(:attr:`DataSubject.log_references`: a staff member's 修改住户 of their household
never shows the phone), replacing the phone, the names the export found and the other
identifying strings (:attr:`DataSubject.log_identifiers`: address, ID number as logged)
with the pseudonym, and clears the address (IP) their own requests came from. The log's
retention deletes the entries themselves after ``SHUIWU_AUDIT_RETENTION_DAYS``.

For the retention of phone numbers: :func:`mask_logged_phones` masks every mobile number
(138****5678) in entries older than ``SHUIWU_RETENTION_LOG_PHONES_DAYS``; the daily
``purge_operation_log`` job runs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import BigInteger, Boolean, Text, and_, bindparam, func, or_, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.audit.models import AuditEntry
from backend.auth.models import PrincipalKind
from backend.auth.privacy import plain, resident_ids
from backend.domain import DataSubject, PersonalSection

# A mainland mobile number standing alone (not inside a longer number such as a meter address).
MOBILE_IN_TEXT = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")
_MOBILE_SQL = "(^|[^0-9])1[3-9][0-9]{9}([^0-9]|$)"
_ACTOR_NAME_CHARS = 100  # the column's width: a pseudonym is longer than the phone it replaces

_REWRITE = text("""
    UPDATE audit_log AS e
    SET actor_name = v.actor_name, summary = v.summary, payload = v.payload::jsonb,
        ip = CASE WHEN v.clear_ip THEN NULL ELSE e.ip END
    FROM unnest(:ids, :actor_names, :summaries, :payloads, :clear_ips) AS v(id, actor_name, summary, payload, clear_ip)
    WHERE e.id = v.id
""").bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)), bindparam("actor_names", type_=ARRAY(Text)),
    bindparam("summaries", type_=ARRAY(Text)), bindparam("payloads", type_=ARRAY(Text)),
    bindparam("clear_ips", type_=ARRAY(Boolean)),
)


def rewrite_strings(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` (plain JSON) with ``change`` applied to every string in it (keys kept)."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: rewrite_strings(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [rewrite_strings(item, change) for item in value]
    return value


def mask_mobiles(value: str) -> str:
    """Every mobile number in ``value`` as 138****5678 (enough for its owner to recognise)."""
    return MOBILE_IN_TEXT.sub(r"\1****\2", value)


# What a rewrite reads of an entry (rows, not ORM objects: the UPDATE would leave those stale).
_ENTRY = (col(AuditEntry.id), col(AuditEntry.at), col(AuditEntry.actor_kind), col(AuditEntry.actor_id),
          col(AuditEntry.actor_name), col(AuditEntry.module), col(AuditEntry.action), col(AuditEntry.summary),
          col(AuditEntry.payload), col(AuditEntry.success), col(AuditEntry.ip))


def phone_pattern(phone: str) -> str:
    """A PostgreSQL regular expression for ``phone`` standing alone: not part of a longer
    number (a meter address, another phone)."""
    return f"(^|[^0-9]){re.escape(phone)}([^0-9]|$)"


def _phone_in_text(phone: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\d){re.escape(phone)}(?!\d)")


# The input keys through which an entry names the record it is about (a household's
# global id or account number), at the top and in a mutation's ``input``.
_REFERENCE_KEYS = ("id", "householdId", "accountNo")
# A reference in 日志内容 (修改住户 8899001: 成功): not inside a longer code or id.
_CODE_CHARS = "0-9A-Za-z+/=_-"


def _subject_entries(phone: str, residents: Sequence[int], references: frozenset[str] = frozenset()) -> Any:
    """The entries of what the residents did, those carrying ``phone`` (as a whole number)
    and those about a record ``references`` names."""
    acted = and_(col(AuditEntry.actor_kind) == PrincipalKind.resident.value, col(AuditEntry.actor_id).in_(residents))
    standing_alone = phone_pattern(phone)
    # strpos first: the cheap test rules out almost every entry before the expression runs.
    found = [col(AuditEntry.actor_name) == phone,
             *(and_(func.strpos(column, phone) > 0, column.regexp_match(standing_alone))
               for column in (col(AuditEntry.summary), func.cast(col(AuditEntry.payload), Text)))]
    if residents:
        found.append(acted)
    if references:
        refs = sorted(references)
        payload = col(AuditEntry.payload)
        found += [payload[key].astext.in_(refs) for key in _REFERENCE_KEYS]
        found += [payload["input"][key].astext.in_(refs) for key in _REFERENCE_KEYS]
        named = "|".join(re.escape(ref) for ref in refs)
        found.append(col(AuditEntry.summary).regexp_match(f"(^|[^{_CODE_CHARS}])({named})([^{_CODE_CHARS}]|$)"))
    return select(*_ENTRY).where(or_(*found)).order_by(col(AuditEntry.id))


# What the export shows of an entry someone else made: not their address, nor a staff
# member's name (a resident's copy of their data holds nobody else's).
_OTHER_ACTORS = {PrincipalKind.staff.value: "工作人员", PrincipalKind.system.value: "系统"}


async def export(session: AsyncSession, subject: DataSubject) -> list[PersonalSection]:
    residents = await resident_ids(session, subject.phone)
    entries = await session.execute(_subject_entries(subject.phone, residents))
    rows = []
    for entry in entries.mappings():
        row = {key: value if key == "payload" else plain(value) for key, value in entry.items() if key != "actor_id"}
        if not (entry["actor_kind"] == PrincipalKind.resident.value and entry["actor_id"] in residents):
            row["ip"] = None
            row["actor_name"] = _OTHER_ACTORS.get(entry["actor_kind"], row["actor_name"])
        rows.append(row)
    return [PersonalSection("audit_log", "操作日志中本人的操作或提及本人手机号的记录", rows)]


async def erase(session: AsyncSession, subject: DataSubject) -> dict[str, int]:
    residents = await resident_ids(session, subject.phone)
    # Longest first, so a name inside a longer one is not replaced piecemeal; the phone
    # only as a whole number.
    needles = sorted({subject.phone, *(found for found in (*subject.aliases, *subject.log_identifiers)
                                       if len(found) >= 2)}, key=len, reverse=True)
    pattern = re.compile("|".join(_phone_in_text(needle).pattern if needle == subject.phone else re.escape(needle)
                                  for needle in needles))

    def change(value: str) -> str:
        return pattern.sub(subject.pseudonym, value)

    entries = list((await session.execute(_subject_entries(subject.phone, residents, subject.log_references))).all())
    await _rewrite(session, entries, change, clear_ip=lambda e: e.actor_kind == PrincipalKind.resident.value
                   and e.actor_id in residents)
    return {"audit_log": len(entries)}


async def _rewrite(session: AsyncSession, entries: Sequence[Any], change: Callable[[str], str],
                   clear_ip: Callable[[Any], bool]) -> None:
    """One UPDATE for the batch: each entry's actor name, 日志内容 and input rewritten."""
    if not entries:
        return
    await session.execute(_REWRITE, {
        "ids": [e.id for e in entries], "actor_names": [change(e.actor_name)[:_ACTOR_NAME_CHARS] for e in entries],
        "summaries": [change(e.summary) for e in entries],
        "payloads": [orjson.dumps(rewrite_strings(e.payload, change)).decode() for e in entries],
        "clear_ips": [clear_ip(e) for e in entries],
    })


async def mask_logged_phones(session: AsyncSession, *, older_than: datetime, after_id: int = 0,
                             batch: int = 1_000) -> tuple[int | None, int]:
    """Mask the mobile numbers of up to ``batch`` entries from before ``older_than`` that
    still show one, in id order after ``after_id``; return the last id looked at (None:
    none left) and how many entries changed. The caller commits each batch and goes on
    from the returned id (a number that only looks like a phone, inside a JSON number,
    is left and never looked at twice)."""
    candidates = list((await session.execute(
        select(*_ENTRY)
        .where(col(AuditEntry.id) > after_id, col(AuditEntry.at) < older_than,
               or_(col(AuditEntry.actor_name).regexp_match(_MOBILE_SQL),
                   col(AuditEntry.summary).regexp_match(_MOBILE_SQL),
                   func.cast(col(AuditEntry.payload), Text).regexp_match(_MOBILE_SQL)))
        .order_by(col(AuditEntry.id)).limit(batch)
    )).all())
    if not candidates:
        return None, 0
    last_id = candidates[-1].id
    changed = [e for e in candidates
               if (mask_mobiles(e.actor_name), mask_mobiles(e.summary), rewrite_strings(e.payload, mask_mobiles))
               != (e.actor_name, e.summary, e.payload)]
    await _rewrite(session, changed, mask_mobiles, clear_ip=lambda e: False)
    return last_id, len(changed)
