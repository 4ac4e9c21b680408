"""Daily reconciliation (对账, issue 18 item 7): one channel's business day against its
merchants' statements (tables and words: ``reconcile_models``).

**Our side** of a day (the utility's zone): the payments of the channel's orders whose
payment's business day it is (paid orders: the money the gateway took), by
``out_trade_no``, and the refunds that succeeded that day (``settled_at``'s day), by
``out_refund_no``, each under the merchant its order was made with. **Theirs**: each
configured merchant's ``OnlineGateway.statement(day)``, fetched through the channel's
``GatewayClient`` before anything is written (no transaction is open while a gateway is
asked).

Each line of either side finds its match by kind and number: none on our side is
``missing_ours`` (with what our books know of the number, if anything: an order still
open or closed, a refund still requested), none on theirs ``missing_theirs``, both with
different amounts ``amount_differs``. A payment on their statement that we booked on
the neighbouring day (a notification just after midnight) is matched, not missing: we
look the number up whatever its day. A statement that cannot be fetched makes the run
``failed`` (nothing compared: a partial comparison would report the other merchants'
lines as missing).

:func:`reconcile` stores the run and its mismatches; the caller commits. The CLI
(``shuiwu pay reconcile``, ``backend.payments.online.cli``), the daily job
(:func:`reconcile_yesterday`) and the report (GraphQL ``reconciliationRuns``) read them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import raw_connection, transaction
from backend.errors import DomainError
from backend.gateways.errors import GatewayError
from backend.payments.models import PaymentChannel
from backend.payments.online.gateway import StatementKind, StatementLine
from backend.payments.online.reconcile_models import (
    MismatchKind,
    ReconciliationMismatch,
    ReconciliationOutcome,
    ReconciliationRun,
)
from backend.payments.online.registry import call_gateway, online_payments
from backend.readings.partitions import as_zone

__all__ = ["ONLINE_CHANNELS", "Fetched", "Line", "Reconciled", "compare", "fetch_statements", "mismatches_of_runs",
           "reconcile", "reconcile_yesterday", "run_page"]

log = logging.getLogger(__name__)

ONLINE_CHANNELS = (PaymentChannel.alipay, PaymentChannel.wechat)


@dataclass(frozen=True, slots=True)
class Line:
    """One line of either side, as compared."""

    kind: StatementKind
    merchant: str
    out_trade_no: str
    amount_fen: int
    out_refund_no: str | None = None
    trade_no: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind.value, self.out_refund_no or "") if self.kind is StatementKind.refund \
            else (self.kind.value, self.out_trade_no)


@dataclass(frozen=True, slots=True)
class Fetched:
    """The statements of a channel's day: the lines of each merchant, or why not."""

    merchants: tuple[str, ...]
    lines: tuple[Line, ...] = ()
    error: str | None = None


async def fetch_statements(services: Mapping[str, Any], *, channel: PaymentChannel, day: date) -> Fetched:
    """Every configured merchant's statement of ``day`` for ``channel`` (module docstring)."""
    online = online_payments(services)
    names = tuple(m.name for m in online.merchants.of_channel(channel))
    if not names:
        return Fetched((), error=f"no {channel.value} merchant is configured")
    lines: list[Line] = []
    for name in names:
        gateway = online.gateway(channel, name)
        try:
            statement: list[StatementLine] = await call_gateway(
                services, gateway, "statement", gateway.statement, day, request={"day": day.isoformat()},
                reference=f"{channel.value}:{name}:{day.isoformat()}")
        except GatewayError as error:
            return Fetched(names, error=f"{name}: {error.code}: {getattr(error, 'detail', '') or error.message_en}"[:500])
        lines.extend(Line(kind=StatementKind(row.kind), merchant=name, out_trade_no=row.out_trade_no,
                          amount_fen=row.amount_fen, out_refund_no=row.out_refund_no, trade_no=row.trade_no)
                     for row in statement)
    return Fetched(names, tuple(lines))


_OURS = """
SELECT 'payment' AS kind, o.merchant, o.out_trade_no, NULL::text AS out_refund_no, o.trade_no, p.amount_fen
FROM payment_orders o JOIN payments p ON p.id = o.payment_id
WHERE o.channel = $1 AND p.business_day = $2
UNION ALL
SELECT 'refund', o.merchant, o.out_trade_no, r.out_refund_no, r.gateway_refund_id, r.amount_fen
FROM payment_refunds r JOIN payment_orders o ON o.id = r.order_id
WHERE o.channel = $1 AND r.state = 'succeeded' AND r.settled_at >= $3 AND r.settled_at < $4
"""

# What our books hold of numbers their statement has and our day does not.
_KNOWN = """
SELECT 'payment' AS kind, o.out_trade_no AS number, o.state, o.amount_fen AS amount_fen,
       (o.payment_id IS NOT NULL) AS booked
FROM payment_orders o WHERE o.channel = $1 AND o.out_trade_no = ANY($2::text[])
UNION ALL
SELECT 'refund', r.out_refund_no, r.state, r.amount_fen, r.state = 'succeeded'
FROM payment_refunds r JOIN payment_orders o ON o.id = r.order_id
WHERE o.channel = $1 AND r.out_refund_no = ANY($3::text[])
"""


async def our_lines(session: AsyncSession, *, channel: PaymentChannel, day: date, tz: str | tzinfo) -> list[Line]:
    zone = as_zone(tz)
    start = datetime.combine(day, datetime.min.time(), tzinfo=zone)
    driver = await raw_connection(session)
    rows = await driver.fetch(_OURS, channel.value, day, start, start + timedelta(days=1))
    return [Line(kind=StatementKind(row["kind"]), merchant=row["merchant"], out_trade_no=row["out_trade_no"],
                 amount_fen=row["amount_fen"], out_refund_no=row["out_refund_no"], trade_no=row["trade_no"])
            for row in rows]


def compare(ours: Sequence[Line], theirs: Sequence[Line]) -> list[ReconciliationMismatch]:
    """The lines without their match, and the matches of different amounts (one per
    number; a number twice on one side is compared by its sum)."""
    def by_key(lines: Sequence[Line]) -> dict[tuple[str, str], tuple[Line, int]]:
        found: dict[tuple[str, str], tuple[Line, int]] = {}
        for line in lines:
            first, total = found.get(line.key, (line, 0))
            found[line.key] = (first, total + line.amount_fen)
        return found

    mine, yours = by_key(ours), by_key(theirs)
    mismatches: list[ReconciliationMismatch] = []
    for key, (line, fen) in yours.items():
        if key not in mine:
            mismatches.append(_mismatch(MismatchKind.missing_ours, line, None, fen))
        elif mine[key][1] != fen:
            mismatches.append(_mismatch(MismatchKind.amount_differs, line, mine[key][1], fen))
    for key, (line, fen) in mine.items():
        if key not in yours:
            mismatches.append(_mismatch(MismatchKind.missing_theirs, line, fen, None))
    return mismatches


def _mismatch(kind: MismatchKind, line: Line, ours: int | None, theirs: int | None) -> ReconciliationMismatch:
    return ReconciliationMismatch(kind=kind, line_kind=line.kind, merchant=line.merchant, out_trade_no=line.out_trade_no,
                                  out_refund_no=line.out_refund_no, trade_no=line.trade_no, our_fen=ours, run_id=0,
                                  their_fen=theirs)


async def _explain_missing(session: AsyncSession, channel: PaymentChannel,
                           mismatches: list[ReconciliationMismatch]) -> list[ReconciliationMismatch]:
    """Drop the payments we booked on another day for the same amount (matched across
    midnight) and say what our books know of the other missing ones."""
    missing = [m for m in mismatches if m.kind is MismatchKind.missing_ours]
    if not missing:
        return mismatches
    driver = await raw_connection(session)
    rows = await driver.fetch(_KNOWN, channel.value,
                              [m.out_trade_no for m in missing if m.line_kind is StatementKind.payment],
                              [m.out_refund_no for m in missing if m.line_kind is StatementKind.refund and m.out_refund_no])
    known = {(row["kind"], row["number"]): row for row in rows}
    kept: list[ReconciliationMismatch] = []
    for mismatch in mismatches:
        if mismatch.kind is MismatchKind.missing_ours:
            number = mismatch.out_refund_no if mismatch.line_kind is StatementKind.refund else mismatch.out_trade_no
            row = known.get((mismatch.line_kind.value, number or ""))
            if row is not None:
                if row["booked"] and row["amount_fen"] == mismatch.their_fen:
                    continue  # booked on the neighbouring day: the same money
                mismatch.detail = (f"ours: {mismatch.line_kind.value} {row['state']}, {row['amount_fen']} fen"
                                   f"{'' if row['booked'] else ', not booked'}")[:200]
        kept.append(mismatch)
    return kept


@dataclass(frozen=True, slots=True)
class Reconciled:
    run: ReconciliationRun
    mismatches: tuple[ReconciliationMismatch, ...]


def _net(lines: Sequence[Line]) -> int:
    return sum(line.amount_fen if line.kind is StatementKind.payment else -line.amount_fen for line in lines)


async def reconcile(session: AsyncSession, *, channel: PaymentChannel, day: date, fetched: Fetched, by: str,
                    started_at: datetime, now: datetime, tz: str | tzinfo = "Asia/Shanghai") -> Reconciled:
    """Compare ``day`` of ``channel`` with the ``fetched`` statements
    (:func:`fetch_statements`, called first, outside any transaction) and store the run
    and its mismatches. The caller commits."""
    channel = PaymentChannel(channel)
    if channel not in ONLINE_CHANNELS:
        raise DomainError("只能对账支付宝或微信", "Only alipay and wechat can be reconciled here", field="channel")
    ours = await our_lines(session, channel=channel, day=day, tz=tz)
    mismatches: list[ReconciliationMismatch] = []
    if fetched.error is None:
        # Only the configured merchants' statements were fetched: our lines of a merchant
        # no longer configured are listed as missing on theirs, which they are as far as
        # anyone can tell.
        mismatches = await _explain_missing(session, channel, compare(ours, fetched.lines))
    outcome = ReconciliationOutcome.failed if fetched.error is not None else (
        ReconciliationOutcome.mismatched if mismatches else ReconciliationOutcome.matched)
    run = ReconciliationRun(channel=channel, day=day, merchants=",".join(fetched.merchants)[:500], outcome=outcome,
                            our_count=len(ours), our_fen=_net(ours), their_count=len(fetched.lines),
                            their_fen=_net(fetched.lines), mismatch_count=len(mismatches), error=fetched.error,
                            run_by=by[:100], started_at=started_at, finished_at=now)
    session.add(run)
    await session.flush()
    assert run.id is not None
    for mismatch in mismatches:
        mismatch.run_id = run.id
        session.add(mismatch)
    await session.flush()
    return Reconciled(run, tuple(mismatches))


async def reconcile_day(runtime_sessions: Any, services: Mapping[str, Any], *, channel: PaymentChannel, day: date,
                        by: str, now: Any, tz: str | tzinfo) -> Reconciled:
    """Fetch (no transaction open), then compare and store in one transaction."""
    started = now()
    fetched = await fetch_statements(services, channel=channel, day=day)
    async with transaction(runtime_sessions) as session:
        return await reconcile(session, channel=channel, day=day, fetched=fetched, by=by, started_at=started,
                               now=now(), tz=tz)


async def reconcile_yesterday(runtime: Any, payload: Mapping[str, Any]) -> list[str]:
    """The daily job ``reconcile``: yesterday (utility zone) of every channel with a
    configured merchant. Returns one line per channel (``alipay 2026-12-09: matched``)."""
    day = runtime.now().astimezone(runtime.tz).date() - timedelta(days=1)
    online = online_payments(runtime.services)
    said: list[str] = []
    for channel in ONLINE_CHANNELS:
        if not online.merchants.of_channel(channel):
            continue
        done = await reconcile_day(runtime.sessions, runtime.services, channel=channel, day=day,
                                   by=runtime.actor.name, now=runtime.now, tz=runtime.timezone)
        line = f"{channel.value} {day.isoformat()}: {done.run.outcome.value} ({done.run.mismatch_count} mismatches)"
        (log.warning if done.run.outcome is not ReconciliationOutcome.matched else log.info)("reconcile %s", line)
        said.append(line)
    return said


def run_json(done: Reconciled) -> dict[str, Any]:
    """What ``shuiwu pay reconcile --json`` prints."""
    run = done.run
    return {
        "run_id": run.id, "channel": run.channel.value, "day": run.day.isoformat(), "outcome": run.outcome.value,
        "merchants": [m for m in run.merchants.split(",") if m], "error": run.error,
        "ours": {"count": run.our_count, "net_fen": run.our_fen},
        "theirs": {"count": run.their_count, "net_fen": run.their_fen},
        "mismatches": [{
            "kind": m.kind.value, "line": m.line_kind.value, "merchant": m.merchant, "out_trade_no": m.out_trade_no,
            "out_refund_no": m.out_refund_no, "trade_no": m.trade_no, "ours_fen": m.our_fen, "theirs_fen": m.their_fen,
            "detail": m.detail,
        } for m in done.mismatches],
    }


# --------------------------------------------------------------------------- the report


async def run_page(session: AsyncSession, *, channel: PaymentChannel | None, start: date | None, end: date | None,
                   offset: int, limit: int) -> tuple[list[ReconciliationRun], int]:
    """The report's runs (``reconciliationRuns``): of ``channel`` (all without), days from
    ``start`` to ``end`` inclusive, newest day first and the newest run of a day first;
    one page and the total."""
    runs = ReconciliationRun.__table__.c  # type: ignore[attr-defined]
    conditions: list[Any] = []
    if channel is not None:
        conditions.append(runs.channel == PaymentChannel(channel))
    if start is not None:
        conditions.append(runs.day >= start)
    if end is not None:
        conditions.append(runs.day <= end)
    total = (await session.execute(select(func.count()).select_from(ReconciliationRun).where(*conditions))).scalar_one()
    rows = await session.execute(select(ReconciliationRun).where(*conditions).order_by(
        runs.day.desc(), runs.id.desc()).offset(offset).limit(limit))
    return list(rows.scalars().all()), int(total)


async def mismatches_of_runs(session: AsyncSession, run_ids: Sequence[int]) -> dict[int, list[ReconciliationMismatch]]:
    """Each run's mismatches, in the order they were found."""
    found: dict[int, list[ReconciliationMismatch]] = {run_id: [] for run_id in run_ids}
    columns = ReconciliationMismatch.__table__.c  # type: ignore[attr-defined]
    rows = await session.execute(select(ReconciliationMismatch).where(columns.run_id.in_(list(run_ids)))
                                 .order_by(columns.id))
    for mismatch in rows.scalars():
        found.setdefault(mismatch.run_id, []).append(mismatch)
    return found
