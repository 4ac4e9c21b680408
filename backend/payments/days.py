"""The cashier's day (日结): one operator's takings for one business day, reconciled with
the ledger, handed over and locked.

**Takings** are computed from the payments the operator took on the business day (the
utility's zone, ``Payment.business_day``), per channel: ``collected`` (money in),
``refunded`` (money out: a closed account's balance), ``reversed`` (those of the day's
collections that were reversed, 冲正) and ``net = collected − refunded − reversed``, with
the number of payments. A reversal counts against the day of the payment it corrects,
whenever it was posted: the usual one is the same cashier's on the same day, and one of
an earlier day (``counter:reverse_any``) is refused once that day is handed over, so a
handed-over day's figures never change.

**Reconciliation.** Beside the takings, :func:`cashier_day` sums the ledger entries those
payments posted (each one's ``recharge`` / ``payment`` or ``refund`` entry, and the
``reversal`` entry of a reversed one), read from ``ledger_entries`` itself. Every payment
posts its entry in its own transaction, so the two are equal to the fen (``balanced``);
a day that does not balance cannot be handed over (CASHIER_DAY_UNBALANCED), which would
mean a bug or a hand-edited table.

**Hand-over** (:func:`hand_over_day`) writes the :class:`CashierDay` row with the takings as
handed over; from then on the core refuses that operator's payments and reversals on the
day (CASHIER_DAY_LOCKED), and a second hand-over is CASHIER_DAY_HANDED_OVER. It holds the
day's advisory lock exclusively (``backend.payments.counter.CASHIER_DAY_LOCK_CLASS``), so
it waits for the day's payments in flight and none slips in after its figures.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import raw_connection
from backend.errors import BadUserInput, NotFound
from backend.payments import errors
from backend.payments.counter import CASHIER_DAY_LOCK_CLASS, business_day, cashier_day_key
from backend.payments.models import CashierDay, PaymentChannel

__all__ = ["MAX_DAYS", "CashierDayFigures", "ChannelTakings", "cashier_day", "cashier_days", "hand_over_day"]

MAX_DAYS = 366


@dataclass(frozen=True, slots=True)
class ChannelTakings:
    channel: PaymentChannel | None  # None: the totals line (over every channel)
    collected_fen: int
    refunded_fen: int
    reversed_fen: int
    count: int

    @property
    def net_fen(self) -> int:
        return self.collected_fen - self.refunded_fen - self.reversed_fen


@dataclass(frozen=True, slots=True)
class CashierDayFigures:
    """One operator's business day: takings per channel (channels with payments, by
    channel), their totals, the ledger's sum and the hand-over, if any."""

    operator_id: int
    operator_name: str
    day: date
    channels: tuple[ChannelTakings, ...]
    ledger_fen: int
    handed_over: CashierDay | None = None
    totals: ChannelTakings = field(init=False)

    def __post_init__(self) -> None:
        total = ChannelTakings(None, sum(c.collected_fen for c in self.channels),
                               sum(c.refunded_fen for c in self.channels), sum(c.reversed_fen for c in self.channels),
                               sum(c.count for c in self.channels))
        object.__setattr__(self, "totals", total)

    @property
    def net_fen(self) -> int:
        return self.totals.net_fen

    @property
    def balanced(self) -> bool:
        return self.ledger_fen == self.net_fen

    def takings_json(self) -> dict[str, dict[str, int]]:
        """The takings as the hand-over stores them (``CashierDay.takings``)."""
        return {str(c.channel): {"collected_fen": c.collected_fen, "refunded_fen": c.refunded_fen,
                                  "reversed_fen": c.reversed_fen, "net_fen": c.net_fen, "count": c.count}
                for c in self.channels}


# Per operator, day and channel over a range of days: the takings, and the ledger entries
# the day's payments posted (their own entry and a reversal's), summed from the ledger.
# $1, $2: the first and last day; $3: the operators (null: everyone).
# A day's moves per cashier and channel: the payments they took or refunded that business
# day (with their entries), and the reversals they made that day (with the reversal
# entries), whatever day the reversed payment was taken: the cash goes back out of the
# reverser's till. $1..$2 the days, $3 the operators (NULL: all).
_TAKINGS = """
WITH moves AS (
    SELECT p.operator_id, p.business_day AS day, p.channel,
           CASE WHEN p.kind = 'collect' THEN p.amount_fen ELSE 0 END AS collected,
           CASE WHEN p.kind = 'refund' THEN p.amount_fen ELSE 0 END AS refunded,
           0::bigint AS reversed, 1 AS counted, p.entry_id AS entry_id
    FROM payments p
    WHERE p.business_day BETWEEN $1 AND $2 AND p.operator_id IS NOT NULL
    UNION ALL
    SELECT p.reversed_by_id, p.reversal_business_day, p.channel, 0, 0, p.amount_fen, 0, p.reversal_entry_id
    FROM payments p
    WHERE p.status = 'reversed' AND p.reversal_business_day BETWEEN $1 AND $2 AND p.reversed_by_id IS NOT NULL
)
SELECT m.operator_id, m.day AS business_day, m.channel,
       sum(m.collected)::bigint AS collected_fen, sum(m.refunded)::bigint AS refunded_fen,
       sum(m.reversed)::bigint AS reversed_fen, sum(m.counted)::bigint AS count,
       coalesce(sum(le.amount_fen), 0)::bigint AS ledger_fen
FROM moves m LEFT JOIN ledger_entries le ON le.id = m.entry_id
WHERE $3::bigint[] IS NULL OR m.operator_id = ANY($3::bigint[])
GROUP BY m.operator_id, m.day, m.channel
"""
# Staff whose unit (区域) lies in the scope: the cashiers a supervisor with counter:day_all
# sees. $1 the scope's path patterns.
_STAFF_IN_SCOPE = """
SELECT s.id FROM staff_users s JOIN areas a ON a.id = s.area_id WHERE a.path LIKE ANY($1::text[])
"""


async def cashiers_in_scope(session: AsyncSession, scope_patterns: Sequence[str] | None) -> list[int] | None:
    """The staff ids whose unit lies within ``scope_patterns`` (None: every cashier): whose
    days a supervisor holding ``counter:day_all`` may read and hand over. A staff user
    without a unit is seen only by an unrestricted caller."""
    if scope_patterns is None:
        return None
    driver = await raw_connection(session)
    return [row["id"] for row in await driver.fetch(_STAFF_IN_SCOPE, list(scope_patterns))]


_NAMES = "SELECT id, full_name FROM staff_users WHERE id = ANY($1::bigint[])"


async def cashier_days(
    session: AsyncSession, *, start: date, end: date, operator_ids: Sequence[int] | None = None,
) -> list[CashierDayFigures]:
    """Every operator's day in ``[start, end]`` (at most :data:`MAX_DAYS` days) that has
    payments or a hand-over, restricted to ``operator_ids`` when given; newest day
    first, then by operator. Three statements whatever the range."""
    if end < start:
        raise BadUserInput("结束日期不能早于开始日期", "`to` cannot be before `from`", field="to")
    if (end - start).days + 1 > MAX_DAYS:
        raise BadUserInput(f"日期范围不能超过 {MAX_DAYS} 天", f"At most {MAX_DAYS} days", field="to")
    driver = await raw_connection(session)
    wanted = list(operator_ids) if operator_ids is not None else None
    records = await driver.fetch(_TAKINGS, start, end, wanted)
    channels: dict[tuple[int, date], list[ChannelTakings]] = defaultdict(list)
    ledger: dict[tuple[int, date], int] = defaultdict(int)
    for record in records:
        key = (record["operator_id"], record["business_day"])
        channels[key].append(ChannelTakings(PaymentChannel(record["channel"]), record["collected_fen"],
                                            record["refunded_fen"], record["reversed_fen"], record["count"]))
        ledger[key] += record["ledger_fen"]
    statement = select(CashierDay).where(CashierDay.business_day >= start,  # type: ignore[arg-type]
                                         CashierDay.business_day <= end)  # type: ignore[arg-type]
    if wanted is not None:
        statement = statement.where(CashierDay.operator_id.in_(wanted))  # type: ignore[attr-defined]
    handed = {(d.operator_id, d.business_day): d for d in (await session.execute(statement)).scalars()}
    keys = sorted(set(channels) | set(handed), key=lambda k: (-k[1].toordinal(), k[0]))
    names = {r["id"]: r["full_name"] for r in await driver.fetch(_NAMES, sorted({k[0] for k in keys}))}
    order: list[PaymentChannel | None] = list(PaymentChannel)
    return [CashierDayFigures(
        operator_id=operator_id, operator_name=names.get(operator_id, ""), day=day,
        channels=tuple(sorted(channels.get((operator_id, day), []), key=lambda c: order.index(c.channel))),
        ledger_fen=ledger.get((operator_id, day), 0), handed_over=handed.get((operator_id, day)),
    ) for operator_id, day in keys]


async def cashier_day(session: AsyncSession, *, operator_id: int, day: date) -> CashierDayFigures:
    """``operator_id``'s takings on ``day`` and the ledger's sum for them (module docstring);
    a day without payments has no channels and nets zero."""
    found = await cashier_days(session, start=day, end=day, operator_ids=[operator_id])
    if found:
        return found[0]
    driver = await raw_connection(session)
    names = {r["id"]: r["full_name"] for r in await driver.fetch(_NAMES, [operator_id])}
    return CashierDayFigures(operator_id=operator_id, operator_name=names.get(operator_id, ""), day=day, channels=(),
                             ledger_fen=0)


async def hand_over_day(
    session: AsyncSession,
    *,
    operator_id: int,
    day: date,
    by: str,
    now: datetime,
    tz: str | tzinfo = "Asia/Shanghai",
    note: str = "",
) -> CashierDayFigures:
    """日结: lock ``operator_id``'s ``day`` with its takings as they stand (module
    docstring). Refused: a day after today (BAD_USER_INPUT), a second hand-over
    (CASHIER_DAY_HANDED_OVER), a day whose takings and ledger differ
    (CASHIER_DAY_UNBALANCED). The caller commits."""
    if day > business_day(now, tz):
        raise BadUserInput("不能日结未来的日期", "A day in the future cannot be handed over", field="day")
    if len(note) > 200:
        raise BadUserInput("备注不能超过 200 个字符", "A note is at most 200 characters", field="note")
    known = await session.execute(text("SELECT 1 FROM staff_users WHERE id = :id"), {"id": operator_id})
    if known.first() is None:
        raise NotFound(field="operatorId")
    await session.execute(text("SELECT pg_advisory_xact_lock(:class, hashtext(:key))"),
                          {"class": CASHIER_DAY_LOCK_CLASS, "key": cashier_day_key(operator_id, day)})
    figures = await cashier_day(session, operator_id=operator_id, day=day)
    if figures.handed_over is not None:
        raise errors.CashierDayHandedOver(field="day")
    if not figures.balanced:
        raise errors.CashierDayUnbalanced(field="day")
    handed = CashierDay(operator_id=operator_id, business_day=day, takings=figures.takings_json(),
                        net_fen=figures.net_fen, handed_over_at=now, handed_over_by=by[:100], note=note.strip())
    session.add(handed)
    await session.flush()
    return CashierDayFigures(operator_id=operator_id, operator_name=figures.operator_name, day=day,
                             channels=figures.channels, ledger_fen=figures.ledger_fen, handed_over=handed)
