"""Reconciliation (对账): a day with one mismatch of each kind, a refund matched, a payment
booked across midnight matched; the stored run; the daily job; and ``shuiwu pay
reconcile``'s exit code, table and JSON. The statements come from stand-in gateways
(refund_helpers); the fakes' statements are driven in the live tests."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import pytest
import typer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from backend.clock import utcnow
from backend.db import transaction
from backend.payments.models import PaymentChannel
from backend.payments.online.gateway import StatementKind, StatementLine
from backend.payments.online.reconcile import reconcile_day
from backend.payments.online.reconcile_models import MismatchKind, ReconciliationOutcome
from backend.payments.online.refunds import refund_online
from tests.billing.factories import at, served_household, tariff
from tests.payments.online.refund_helpers import StandInGateway, paid_order, services_of

ALIPAY = PaymentChannel.alipay
DAY = date(2026, 12, 9)
NOON = at(2026, 12, 9, 12)


def line(kind: StatementKind, out_trade_no: str, fen: int, out_refund_no: str | None = None) -> StatementLine:
    return StatementLine(kind=kind, out_trade_no=out_trade_no, trade_no=f"T-{out_trade_no}", amount_fen=fen, at=NOON,
                         out_refund_no=out_refund_no)


@pytest.fixture(scope="module")
async def day_books(committed_sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    """Our books of DAY for alipay: four payments, one refund, and one paid the evening before."""
    async with transaction(committed_sessions) as session:
        served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
        assert served.household.id is not None
        orders = [(await paid_order(session, account_id=served.account_id, household_id=served.household.id,
                                    channel=ALIPAY, fen=fen, at=when))[0]
                  for fen, when in ((1000, at(2026, 12, 8, 23)), (2000, NOON), (3000, NOON), (4000, NOON))]
    refund_gateway = StandInGateway(ALIPAY)
    done = await refund_online(committed_sessions, services_of(refund_gateway), account_id=served.account_id,
                               amount_fen=500, reason="错缴", by="收费员", now=lambda: NOON + timedelta(hours=1))
    return {"orders": [o.out_trade_no for o in orders], "refund": done.refunds[0]}


def statement_gateway(books: dict[str, Any]) -> StandInGateway:
    """Their statement of DAY: the evening-before payment (its platform put it on DAY), the
    2000 one, the 3000 one for 3001, not the 4000 one, one we never heard of, the refund."""
    evening, twenty, thirty, _ = books["orders"]
    refund = books["refund"]
    gateway = StandInGateway(ALIPAY)
    gateway.lines[DAY] = [line(StatementKind.payment, evening, 1000), line(StatementKind.payment, twenty, 2000),
                          line(StatementKind.payment, thirty, 3001), line(StatementKind.payment, "SW209912310000000042", 777),
                          line(StatementKind.refund, twenty if refund.order_id else "", 500, refund.out_refund_no)]
    return gateway


async def test_a_day_with_one_mismatch_of_each_kind(committed_sessions: async_sessionmaker[AsyncSession],
                                                     day_books: dict[str, Any]) -> None:
    services = services_of(statement_gateway(day_books))
    done = await reconcile_day(committed_sessions, services, channel=ALIPAY, day=DAY, by="tester", now=utcnow,
                               tz="Asia/Shanghai")
    _, _, thirty, forty = day_books["orders"]
    found = sorted((m.kind, m.out_trade_no, m.our_fen, m.their_fen) for m in done.mismatches)
    assert found == sorted([(MismatchKind.amount_differs, thirty, 3000, 3001),
                            (MismatchKind.missing_theirs, forty, 4000, None),
                            (MismatchKind.missing_ours, "SW209912310000000042", None, 777)])
    run = done.run
    assert (run.outcome, run.mismatch_count, run.merchants) == (ReconciliationOutcome.mismatched, 3, "demo")
    # Ours: 2000 + 3000 + 4000 paid that day, the 500 refund; theirs as listed.
    assert (run.our_count, run.our_fen, run.their_count, run.their_fen) == (4, 8500, 5, 6278)
    async with committed_sessions() as session:
        stored = (await session.execute(text("SELECT count(*) FROM reconciliation_mismatches WHERE run_id = :r"),
                                        {"r": run.id})).scalar_one()
    assert stored == 3


async def test_a_statement_that_cannot_be_fetched_fails_the_run_and_compares_nothing(
        committed_sessions: async_sessionmaker[AsyncSession], day_books: dict[str, Any]) -> None:
    class Unreachable(StandInGateway):
        def statement(self, day: date) -> list[StatementLine]:
            from backend.gateways.errors import GatewayUnavailable

            raise GatewayUnavailable(detail="connection refused")

    done = await reconcile_day(committed_sessions, services_of(Unreachable(ALIPAY)), channel=ALIPAY, day=DAY, by="t",
                               now=utcnow, tz="Asia/Shanghai")
    assert done.run.outcome is ReconciliationOutcome.failed and done.mismatches == ()
    assert "connection refused" in (done.run.error or "")


def test_the_cli_prints_the_mismatches_as_json_and_a_table_and_exits_1(
        database_url: str, day_books: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.payments.online import cli

    gateway = statement_gateway(day_books)
    monkeypatch.setattr(cli, "_services", lambda settings, domains, sessions: services_of(gateway))

    class Host:
        domains = ()

        def settings(self) -> Any:
            from backend.settings import Settings

            return Settings()

        def migrated_database(self) -> str:
            return database_url

    app = typer.Typer()
    app.add_typer(cli.pay_app, name="pay")
    runner = CliRunner()
    as_json = runner.invoke(app, ["pay", "reconcile", "--date", "2026-12-09", "--channel", "alipay", "--json"],
                            obj=Host())
    assert as_json.exit_code == 1, as_json.output
    printed = json.loads(as_json.stdout)
    assert printed["outcome"] == "mismatched" and printed["day"] == "2026-12-09"
    assert sorted(m["kind"] for m in printed["mismatches"]) == ["amount_differs", "missing_ours", "missing_theirs"]
    as_table = runner.invoke(app, ["pay", "reconcile", "--date", "2026-12-09", "--channel", "alipay"], obj=Host())
    assert as_table.exit_code == 1 and "amount_differs" in as_table.stdout and "SW209912310000000042" in as_table.stdout
    # A day where both sides agree (nothing on either): exit 0.
    empty = runner.invoke(app, ["pay", "reconcile", "--date", "2026-12-01", "--channel", "alipay"], obj=Host())
    assert empty.exit_code == 0, empty.output
    refused = runner.invoke(app, ["pay", "reconcile", "--date", "2026-12-01", "--channel", "bank"], obj=Host())
    assert refused.exit_code == 2
