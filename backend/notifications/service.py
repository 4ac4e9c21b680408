"""Messages: writing them set-based, the inbox, devices and preferences (docs/notifications.md).

:func:`notify_many` is the one writer of messages (:func:`notify_households` is the
same for the households a query selects). One statement (data-modifying CTEs over
``unnest`` arrays, or over the households query, no Python loop over rows) expands
household recipients to the residents bound to them **now**, inserts the messages —
plainly when no message has the dedupe key yet, else with ``ON CONFLICT (recipient,
dedupe_key) DO NOTHING`` — and queues, only for the rows it really inserted, the pushes
(one ``push_deliveries`` row per message text, release time and 1000 registration ids)
and the SMS (one ``sms_deliveries`` row per household without an active app device, for
kinds with the SMS channel, itself unique on (household, dedupe key)), and, for a uniform
call, writes the ``message.created`` events. A replayed event therefore writes and sends
nothing. Sending happens after commit, in the job worker (``backend.notifications.push``
/ ``.sms``), woken by this domain's handler of the ``message.created`` events written
here.

Decisions:
- ``message.created`` is emitted in chunks of :data:`EVENT_CHUNK` messages: a 100k
  notice fan-out is 20 events, each small enough for a subscription to filter quickly.
- Quiet hours **delay** a push until they end (a balance alert at 23:00 arrives at
  07:00 as a push; it is in the inbox at once). Nothing is dropped.
- A household with no bound resident gets no inbox message (nobody reads it), only the
  SMS where its kind has that channel.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import raw_connection
from backend.errors import BadUserInput
from backend.events.service import EVENTS_CHANNEL, emit_event
from backend.notifications.channels import Channel, channels_of
from backend.notifications.events import MessageCreated
from backend.notifications.kinds import MessageKind, Recipient, RecipientKind
from backend.notifications.models import DevicePlatform, UserKind

# Messages per message.created event.
EVENT_CHUNK = 5000
# JPush takes at most 1000 registration ids per call.
PUSH_BATCH = 1000
DEFAULT_TIMEZONE = "Asia/Shanghai"
# The unique index a replay or a concurrent writer of the same key meets (models.Message).
UNIQUE_DEDUPE = "uq_messages_dedupe_recipient"
# Past this many recipients the statement gets more memory to sort in.
LARGE_FAN_OUT = 10_000
LARGE_FAN_OUT_WORK_MEM = "64MB"

# The quiet-hours release time of a push: now, or the end of the recipient's quiet hours
# (``p``: their preferences row) when now falls inside them ($8 now, $11 the time zone).
_RELEASE_AT = """
CASE WHEN p.quiet_start IS NULL OR p.quiet_end IS NULL OR p.quiet_start = p.quiet_end THEN $8
     WHEN (CASE WHEN p.quiet_start < p.quiet_end
                THEN ($8 AT TIME ZONE $11)::time >= p.quiet_start AND ($8 AT TIME ZONE $11)::time < p.quiet_end
                ELSE ($8 AT TIME ZONE $11)::time >= p.quiet_start OR ($8 AT TIME ZONE $11)::time < p.quiet_end
           END)
     THEN ((($8 AT TIME ZONE $11)::date + p.quiet_end)
           + CASE WHEN p.quiet_end <= ($8 AT TIME ZONE $11)::time THEN interval '1 day' ELSE interval '0' END)
          AT TIME ZONE $11
     ELSE $8 END"""

_WRITE = f"""
WITH consts AS (
    -- A uniform call's one text, parsed once (its arrays hold one element each).
    SELECT ($3::text[])[1] AS title, ($4::text[])[1] AS body, ($5::text[])[1]::jsonb AS data,
           ($6::text[])[1] AS dedupe
),
input AS (
    SELECT t.rk, t.rid,
           coalesce(t.title, c.title) AS title,
           coalesce(t.body, c.body) AS body,
           coalesce(t.data::jsonb, c.data) AS data,
           coalesce(t.dedupe, c.dedupe) AS dedupe
    FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])
         AS t(rk, rid, title, body, data, dedupe)
    CROSS JOIN consts c
    WHERE t.rk IS NOT NULL
),
expanded AS (
    SELECT rk AS recipient_kind, rid AS recipient_id, NULL::bigint AS household_id, title, body, data, dedupe
    FROM input WHERE rk <> 'household'
    UNION ALL
    SELECT 'resident', rh.resident_id, i.rid, i.title, i.body, i.data, i.dedupe
    FROM input i JOIN resident_households rh ON rh.household_id = i.rid
    WHERE i.rk = 'household'
),
ins AS (
    INSERT INTO messages (recipient_kind, recipient_id, household_id, kind, title, body, data, dedupe_key, created_at)
    SELECT recipient_kind, recipient_id, household_id, $7, title, body, data, dedupe, $8 FROM expanded
    ON CONFLICT (recipient_kind, recipient_id, dedupe_key) DO NOTHING
    RETURNING id, recipient_kind, recipient_id, title, body, data, dedupe_key
),
pushable AS (
    -- One message text per group: all of a uniform call's messages are group '' (the text is
    -- the parameters'); a draft's messages (one per resident of its household) are grouped by
    -- draft (its dedupe key) and carry its text.
    SELECT m.id, d.registration_id,
           CASE WHEN $12 THEN '' ELSE m.dedupe_key END AS grp,
           CASE WHEN $12 THEN NULL ELSE m.title END AS title,
           CASE WHEN $12 THEN NULL ELSE m.body END AS body,
           CASE WHEN $12 THEN NULL ELSE m.data END AS data,
           {_RELEASE_AT} AS release_at,
           -- Numbered without a sort: a batch of a group holds at most 1000 (fewer when
           -- groups interleave), and a uniform fan-out fills them.
           (row_number() OVER () - 1) / {PUSH_BATCH} AS batch
    FROM ins m
    JOIN push_devices d ON d.user_kind = m.recipient_kind AND d.user_id = m.recipient_id AND d.active
    LEFT JOIN notification_preferences p ON p.user_kind = m.recipient_kind AND p.user_id = m.recipient_id
    WHERE $10 AND NOT ($7 = ANY(coalesce(p.muted_kinds, '{{}}')))
),
push AS (
    INSERT INTO push_deliveries (kind, title, body, extras, registration_ids, message_ids, state, attempts,
                                 next_attempt_at, created_at)
    SELECT $7, coalesce(min(title), ($3::text[])[1]), coalesce(min(body), ($4::text[])[1]),
           coalesce((array_agg(data))[1], ($5::text[])[1]::jsonb),
           array_agg(registration_id), array_agg(id), 'queued', 0, release_at, $8
    FROM pushable GROUP BY grp, release_at, batch
    RETURNING id
),
sms AS (
    INSERT INTO sms_deliveries (household_id, kind, text, dedupe_key, state, attempts, next_attempt_at, created_at)
    SELECT i.rid, $7, i.body, i.dedupe, 'queued', 0, $8, $8 FROM input i
    WHERE $9 AND i.rk = 'household' AND NOT EXISTS (
        SELECT FROM resident_households rh
        JOIN push_devices d ON d.user_kind = 'resident' AND d.user_id = rh.resident_id AND d.active
        WHERE rh.household_id = i.rid)
    ON CONFLICT (household_id, dedupe_key) DO NOTHING
    RETURNING id
)
SELECT ins.id, ins.recipient_kind, ins.recipient_id, c.pushes, c.sms
FROM (SELECT (SELECT count(*) FROM push) AS pushes, (SELECT count(*) FROM sms) AS sms) c
LEFT JOIN ins ON true
"""


@functools.lru_cache(maxsize=64)
def _uniform(households: str, *, new_key: bool, direct: bool = True) -> str:
    """The statement of a uniform call (one title, body, data and dedupe key for every
    recipient): ``households`` selects the household recipients' ids (one column), the
    arrays $1/$2 the direct ones (residents, staff).

    Against the drafts' statement it is built for the large fan-out: no text travels per
    row (the constants are written once each), the households join their residents by a
    hash join (their row estimate is the array's length or the query's, never a guess on a
    filtered CTE), RETURNING carries only what the pushes and events need, push batches are
    numbered without a sort (one text: only the release time groups), and the
    ``message.created`` payloads are built here, in :data:`EVENT_CHUNK` chunks, instead of
    100k rows travelling to Python to be encoded there. The result is one row: the ids
    written (one array value), the deliveries queued and the events' ids to notify.

    ``new_key``: no message has the dedupe key yet (:func:`_write_uniform` looked), so the
    rows are inserted plainly, without ON CONFLICT's speculative insertion and its check
    per row (a quarter of the insert's time at 100k); a writer of the same key that
    committed meanwhile makes it fail on the unique index, and the caller runs the
    ON CONFLICT form instead. Each recipient appears once either way (a resident bound to
    two of the households: the first household), in recipient order, which is also the
    inbox indexes' order. The recipients are made unique before the text is added, so the
    sort carries ids only, not 100k copies of the title, body and data; ``direct=False``
    (households only, a notice's fan-out) sorts the residents by id alone."""
    conflict = "" if new_key else "ON CONFLICT (recipient_kind, recipient_id, dedupe_key) DO NOTHING"
    if direct:
        recipients = """SELECT DISTINCT ON (recipient_kind, recipient_id) recipient_kind, recipient_id, household_id
    FROM (SELECT t.rk, t.rid, NULL::bigint FROM unnest($1::text[], $2::bigint[]) AS t(rk, rid)
          UNION ALL
          SELECT 'resident', rh.resident_id, hh.rid FROM hh JOIN resident_households rh ON rh.household_id = hh.rid
    ) AS e(recipient_kind, recipient_id, household_id)
    ORDER BY recipient_kind, recipient_id, household_id"""
    else:
        recipients = """SELECT DISTINCT ON (rh.resident_id) 'resident', rh.resident_id, hh.rid
    FROM hh JOIN resident_households rh ON rh.household_id = hh.rid
    WHERE cardinality($1::text[]) + cardinality($2::bigint[]) = 0
    ORDER BY rh.resident_id, hh.rid"""
    return f"""
WITH hh AS MATERIALIZED (
    SELECT h.id AS rid FROM ({households}) AS h(id)
),
recipients AS (
    {recipients}
),
ins AS (
    INSERT INTO messages (recipient_kind, recipient_id, household_id, kind, title, body, data, dedupe_key, created_at)
    SELECT r.recipient_kind, r.recipient_id, r.household_id, $7, $3, $4, $5::jsonb, $6, $8
    FROM recipients AS r(recipient_kind, recipient_id, household_id)
    {conflict}
    RETURNING id, recipient_kind, recipient_id
),
pushable AS (
    SELECT m.id, d.registration_id, {_RELEASE_AT} AS release_at,
           -- One text: batches of 1000 in the order the devices come, split only by release time.
           (row_number() OVER () - 1) / {PUSH_BATCH} AS batch
    FROM ins m
    JOIN push_devices d ON d.user_kind = m.recipient_kind AND d.user_id = m.recipient_id AND d.active
    LEFT JOIN notification_preferences p ON p.user_kind = m.recipient_kind AND p.user_id = m.recipient_id
    WHERE $10 AND (p.muted_kinds IS NULL OR NOT ($7 = ANY(p.muted_kinds)))
),
push AS (
    INSERT INTO push_deliveries (kind, title, body, extras, registration_ids, message_ids, state, attempts,
                                 next_attempt_at, created_at)
    SELECT $7, $3, $4, $5::jsonb, array_agg(registration_id), array_agg(id), 'queued', 0, release_at, $8
    FROM pushable GROUP BY release_at, batch
    RETURNING id
),
sms AS (
    INSERT INTO sms_deliveries (household_id, kind, text, dedupe_key, state, attempts, next_attempt_at, created_at)
    SELECT hh.rid, $7, $4, $6, 'queued', 0, $8, $8 FROM hh
    WHERE $9 AND NOT EXISTS (
        SELECT FROM resident_households rh
        JOIN push_devices d ON d.user_kind = 'resident' AND d.user_id = rh.resident_id AND d.active
        WHERE rh.household_id = hh.rid)
    ON CONFLICT (household_id, dedupe_key) DO NOTHING
    RETURNING id
),
events AS (
    -- message.created as MessageCreated encodes it: parallel lists (one aggregation's order).
    INSERT INTO domain_events (kind, payload)
    SELECT 'message.created', json_build_object('message_ids', json_agg(id),
                                                'recipient_ids', json_agg(recipient_kind || ':' || recipient_id))::jsonb
    FROM (SELECT id, recipient_kind, recipient_id, (row_number() OVER () - 1) / {EVENT_CHUNK} AS chunk FROM ins) c
    GROUP BY chunk
    RETURNING id
)
SELECT (SELECT array_agg(id) FROM ins) AS ids, (SELECT count(*) FROM push) AS pushes,
       (SELECT count(*) FROM sms) AS sms, (SELECT array_agg(id ORDER BY id) FROM events) AS events
"""


_FIRST_ARGUMENT = 12  # a households query's first parameter ($1–$11 are the statement's)
_HOUSEHOLD_ARRAY = "SELECT unnest($12::bigint[])"
# Named parameters of a households query (``:name``, not a ``::cast``).
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True)
class Draft:
    """One message before it is written: whom, what, where it links, its dedupe key."""

    recipient: Recipient
    title: str
    body: str
    data: Mapping[str, Any]
    dedupe_key: str


@dataclass(frozen=True, slots=True)
class Written:
    """What one write did: the messages inserted, and the pushes and SMS it queued."""

    message_ids: tuple[int, ...]
    push_deliveries: int
    sms_deliveries: int


def _data_text(data: Mapping[str, Any]) -> str:
    return json.dumps(dict(data), ensure_ascii=False, sort_keys=True, default=str)


async def write_messages(
    session: AsyncSession, *, kind: MessageKind | str, drafts: Sequence[Draft] = (),
    recipients: Sequence[Recipient] = (), title: str = "", body: str = "", data: Mapping[str, Any] | None = None,
    dedupe_key: str = "", now: datetime, timezone: str = DEFAULT_TIMEZONE,
) -> Written:
    """Write messages of ``kind`` set-based (module docstring) and emit ``message.created``.

    Either ``drafts`` (each its own text) or ``recipients`` with one ``title``, ``body``,
    ``data`` and ``dedupe_key`` for all. The caller commits."""
    kind = str(kind)
    if drafts and recipients:
        raise ValueError("give drafts or recipients, not both")
    if drafts:
        kinds = [str(draft.recipient.kind) for draft in drafts]
        ids = [draft.recipient.id for draft in drafts]
        titles = [draft.title for draft in drafts]
        bodies = [draft.body for draft in drafts]
        datas = [_data_text(draft.data) for draft in drafts]
        keys = [draft.dedupe_key for draft in drafts]
    else:
        households = [recipient.id for recipient in recipients if recipient.kind == RecipientKind.HOUSEHOLD]
        direct = [recipient for recipient in recipients if recipient.kind != RecipientKind.HOUSEHOLD]
        if not dedupe_key:
            raise ValueError("a message needs a dedupe key")
        if not recipients:
            return Written((), 0, 0)
        return await _write_uniform(
            session, households=_HOUSEHOLD_ARRAY, arguments=(households,), kinds=[str(r.kind) for r in direct],
            ids=[r.id for r in direct], kind=kind, title=title, body=body, data=data, dedupe_key=dedupe_key, now=now,
            timezone=timezone)
    if not ids:
        return Written((), 0, 0)
    channels = channels_of(kind)
    driver = await raw_connection(session)
    if len(ids) > LARGE_FAN_OUT:
        # A fan-out's joins and groupings sort ~1.5 rows a recipient: in memory, not on disk
        # (for the rest of the caller's transaction only).
        await driver.execute(f"SET LOCAL work_mem = '{LARGE_FAN_OUT_WORK_MEM}'")
    rows = await driver.fetch(_WRITE, kinds, ids, titles, bodies, datas, keys, kind, now,
                              Channel.sms in channels, Channel.push in channels, timezone, not drafts)
    written = [row for row in rows if row["id"] is not None]
    message_ids = tuple(row["id"] for row in written)
    for start in range(0, len(written), EVENT_CHUNK):
        chunk = written[start:start + EVENT_CHUNK]
        await emit_event(session, "message.created", MessageCreated(
            message_ids=tuple(row["id"] for row in chunk),
            recipient_ids=tuple(f"{row['recipient_kind']}:{row['recipient_id']}" for row in chunk)))
    return Written(message_ids, rows[0]["pushes"], rows[0]["sms"])


async def _write_uniform(
    session: AsyncSession, *, households: str, arguments: Sequence[Any], kinds: list[str], ids: list[int], kind: str,
    title: str, body: str, data: Mapping[str, Any] | None, dedupe_key: str, now: datetime, timezone: str,
) -> Written:
    """Write a uniform call through a :func:`_uniform` statement and notify its events
    (``arguments``: the households query's, after the statement's $1–$11)."""
    channels = channels_of(kind)
    driver = await raw_connection(session)
    # For the statement only (restored after it; on error the transaction is aborted anyway):
    # a fan-out's hash joins, sort and aggregations in memory, and a plan for these values,
    # never a generic one guessing ten households. And whether the key is new (one probe).
    before = await driver.fetchrow(
        "SELECT current_setting('work_mem') AS work_mem, current_setting('plan_cache_mode') AS plans, "
        "set_config('work_mem', $1, true), set_config('plan_cache_mode', 'force_custom_plan', true), "
        "EXISTS (SELECT FROM messages WHERE dedupe_key = $2) AS seen", LARGE_FAN_OUT_WORK_MEM, dedupe_key)
    values = (kinds, ids, title, body, _data_text(data or {}), dedupe_key, kind, now, Channel.sms in channels,
              Channel.push in channels, timezone, *arguments)
    direct = bool(ids)
    if before["seen"]:
        row = await driver.fetchrow(_uniform(households, new_key=False, direct=direct), *values)
    else:
        await driver.execute("SAVEPOINT notify_new_key")
        try:
            row = await driver.fetchrow(_uniform(households, new_key=True, direct=direct), *values)
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name != UNIQUE_DEDUPE:
                raise
            # A writer of the same key committed since we looked: what it wrote is skipped.
            await driver.execute("ROLLBACK TO SAVEPOINT notify_new_key")
            row = await driver.fetchrow(_uniform(households, new_key=False, direct=direct), *values)
        await driver.execute("RELEASE SAVEPOINT notify_new_key")
    await driver.execute("SELECT set_config('work_mem', $1, true), set_config('plan_cache_mode', $2, true)",
                         before["work_mem"], before["plans"])
    if row["events"]:
        # What emit_event does for each: the relay wakes on the id, at commit.
        await driver.execute("SELECT pg_notify($1, e.id::text) FROM unnest($2::bigint[]) AS e(id)", EVENTS_CHANNEL,
                             row["events"])
    return Written(tuple(row["ids"] or ()), row["pushes"], row["sms"])


async def notify_many(
    session: AsyncSession, *, kind: MessageKind | str, recipients: Sequence[Recipient], title: str, body: str,
    data: Mapping[str, Any] | None = None, dedupe_key: str, now: datetime, timezone: str = DEFAULT_TIMEZONE,
) -> int:
    """Write one message of ``kind`` to each of ``recipients`` (a household: each resident
    bound to it now, and its phone by SMS when the kind has that channel and none of them
    has the app), queue their pushes, and return how many messages were written: a
    recipient who already has a message with ``dedupe_key`` gets nothing more. The
    caller commits; sending happens after commit."""
    written = await write_messages(session, kind=kind, recipients=recipients, title=title, body=body, data=data,
                                   dedupe_key=dedupe_key, now=now, timezone=timezone)
    return len(written.message_ids)


async def notify(
    session: AsyncSession, *, kind: MessageKind | str, recipient: Recipient, title: str, body: str,
    data: Mapping[str, Any] | None = None, dedupe_key: str, now: datetime, timezone: str = DEFAULT_TIMEZONE,
) -> int:
    """:func:`notify_many` for one recipient."""
    return await notify_many(session, kind=kind, recipients=[recipient], title=title, body=body, data=data,
                             dedupe_key=dedupe_key, now=now, timezone=timezone)


async def notify_households(
    session: AsyncSession, *, kind: MessageKind | str, households: str, arguments: Mapping[str, Any] | None = None,
    title: str, body: str, data: Mapping[str, Any] | None = None, dedupe_key: str, now: datetime,
    timezone: str = DEFAULT_TIMEZONE,
) -> int:
    """:func:`notify_many` to every household a query selects, set-based from end to end:
    ``households`` is a SELECT of one column of household ids (each at most once) with
    ``:name`` parameters from ``arguments``; it runs inside the writing statement, so a
    100k audience never travels through Python. Same messages, pushes, SMS, events and
    dedupe as ``notify_many`` with those households as recipients; returns how many
    messages were written."""
    values = dict(arguments or {})
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${_FIRST_ARGUMENT + names.index(match.group(1))}"

    query = _NAMED.sub(positional, households)
    missing = [name for name in names if name not in values]
    if missing:
        raise ValueError(f"the households query needs {missing}")
    written = await _write_uniform(
        session, households=query, arguments=[values[name] for name in names], kinds=[], ids=[],
        kind=str(kind), title=title, body=body, data=data, dedupe_key=dedupe_key, now=now, timezone=timezone)
    return len(written.message_ids)


# --------------------------------------------------------------------------- inbox


@dataclass(frozen=True, slots=True)
class InboxUser:
    kind: UserKind
    id: int


async def unread_count(session: AsyncSession, *, user: InboxUser) -> int:
    result = await session.execute(text(
        "SELECT count(*) FROM messages WHERE recipient_kind = :k AND recipient_id = :i AND read_at IS NULL"),
        {"k": user.kind.value, "i": user.id})
    return int(result.scalar_one())


async def inbox_page(
    session: AsyncSession, *, user: InboxUser, offset: int, limit: int, unread_only: bool = False,
    kind: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """A page of the user's messages, newest first, and how many match in all."""
    where = """
        WHERE recipient_kind = :k AND recipient_id = :i
          AND (NOT :unread OR read_at IS NULL)
          AND (CAST(:kind AS text) IS NULL OR kind = :kind)
    """
    values = {"k": user.kind.value, "i": user.id, "unread": unread_only, "kind": kind}
    result = await session.execute(text(
        f"SELECT id, kind, title, body, data, household_id, created_at, read_at FROM messages {where} "
        "ORDER BY id DESC OFFSET :offset LIMIT :limit"), {**values, "offset": offset, "limit": limit})
    rows = [dict(row._mapping) for row in result]
    total = (await session.execute(text(f"SELECT count(*) FROM messages {where}"), values)).scalar_one()
    return rows, int(total)


async def mark_read(session: AsyncSession, *, user: InboxUser, ids: Sequence[int] | None, now: datetime) -> int:
    """Mark the user's messages ``ids`` (None: all) read; another user's ids are ignored.
    Returns how many changed."""
    result = await session.execute(text(
        """
        UPDATE messages SET read_at = :now
        WHERE recipient_kind = :k AND recipient_id = :i AND read_at IS NULL
          AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(CAST(:ids AS bigint[])))
        """), {"now": now, "k": user.kind.value, "i": user.id, "ids": None if ids is None else list(ids)})
    return int(result.rowcount)  # type: ignore[attr-defined]


async def messages_by_ids(session: AsyncSession, *, user: InboxUser, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The user's own messages among ``ids`` (a subscription's delivery), oldest first."""
    result = await session.execute(text(
        """
        SELECT id, kind, title, body, data, household_id, created_at, read_at FROM messages
        WHERE recipient_kind = :k AND recipient_id = :i AND id = ANY(CAST(:ids AS bigint[])) ORDER BY id
        """), {"k": user.kind.value, "i": user.id, "ids": list(ids)})
    return [dict(row._mapping) for row in result]


# --------------------------------------------------------------------------- devices


async def register_device(
    session: AsyncSession, *, user: InboxUser, registration_id: str, platform: DevicePlatform, now: datetime,
) -> None:
    """Register (or re-register) an app installation for ``user``: a registration id
    another user had moves to this one (the phone changed hands or accounts)."""
    await session.execute(text(
        """
        INSERT INTO push_devices (registration_id, platform, user_kind, user_id, active, registered_at)
        VALUES (:r, :p, :k, :i, true, :now)
        ON CONFLICT (registration_id) DO UPDATE
        SET platform = EXCLUDED.platform, user_kind = EXCLUDED.user_kind, user_id = EXCLUDED.user_id,
            active = true, registered_at = EXCLUDED.registered_at
        """), {"r": registration_id, "p": platform.value, "k": user.kind.value, "i": user.id, "now": now})


async def unregister_device(session: AsyncSession, *, user: InboxUser, registration_id: str) -> bool:
    """Stop pushing to the user's installation ``registration_id`` (logout); another
    user's registration is left alone. Returns whether one was active."""
    result = await session.execute(text(
        "UPDATE push_devices SET active = false WHERE registration_id = :r AND user_kind = :k AND user_id = :i "
        "AND active"), {"r": registration_id, "k": user.kind.value, "i": user.id})
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- preferences


@dataclass(frozen=True, slots=True)
class Preferences:
    muted_kinds: tuple[str, ...] = ()
    quiet_start: time | None = None
    quiet_end: time | None = None


async def preferences_of(session: AsyncSession, *, user: InboxUser) -> Preferences:
    result = await session.execute(text(
        "SELECT muted_kinds, quiet_start, quiet_end FROM notification_preferences WHERE user_kind = :k AND user_id = :i"),
        {"k": user.kind.value, "i": user.id})
    row = result.one_or_none()
    if row is None:
        return Preferences()
    return Preferences(tuple(row.muted_kinds), row.quiet_start, row.quiet_end)


async def set_preferences(session: AsyncSession, *, user: InboxUser, preferences: Preferences, now: datetime) -> None:
    """Replace the user's preferences. Quiet hours are both set or both unset (BadUserInput)."""
    if (preferences.quiet_start is None) != (preferences.quiet_end is None):
        raise BadUserInput("免打扰时段须同时填写开始和结束时间", "Quiet hours need both a start and an end",
                           field="quietEnd" if preferences.quiet_end is None else "quietStart")
    await session.execute(text(
        """
        INSERT INTO notification_preferences (user_kind, user_id, muted_kinds, quiet_start, quiet_end, updated_at)
        VALUES (:k, :i, :m, :qs, :qe, :now)
        ON CONFLICT (user_kind, user_id) DO UPDATE
        SET muted_kinds = EXCLUDED.muted_kinds, quiet_start = EXCLUDED.quiet_start, quiet_end = EXCLUDED.quiet_end,
            updated_at = EXCLUDED.updated_at
        """), {"k": user.kind.value, "i": user.id, "m": sorted(set(preferences.muted_kinds)),
               "qs": preferences.quiet_start, "qe": preferences.quiet_end, "now": now})


__all__ = [
    "Draft", "InboxUser", "MessageKind", "Preferences", "Recipient", "RecipientKind", "Written", "inbox_page",
    "mark_read", "messages_by_ids", "notify", "notify_households", "notify_many", "preferences_of", "register_device", "set_preferences",
    "unread_count", "unregister_device", "write_messages",
]
