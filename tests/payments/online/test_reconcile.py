"""Reconciliation (对账) against the local gateways' statements over HTTP: a day of Alipay
with one mismatch of each kind (a payment the gateway took that we never credited, one
of ours the gateway never saw, one it holds for another amount) beside a payment and a
refund that match; a WeChat day (v3 and v2 merchants) that matches, its refund settled
by the job first; an unreachable gateway failing the run; ``shuiwu pay reconcile``'s
JSON, table and exit codes; and the ``reconciliationRuns`` report.

The gateways date their statements by their own clock, so "the day" is today (China)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
import typer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from backend.archives.models import Area
from backend.clock import utcnow
from backend.db import transaction
from backend.payments.models import PaymentChannel
from backend.payments.online.alipay import AlipayGateway
from backend.payments.online.merchants import AlipayMerchant
from backend.payments.online.reconcile import reconcile_day
from backend.payments.online.reconcile_models import MismatchKind, ReconciliationOutcome
from backend.payments.online.refunds import query_open_refunds, refund_online
from backend.payments.online.registry import SERVICE, OnlinePayments
from backend.readings.partitions import as_zone
from tests.billing.factories import Served, at, served_household, tariff
from tests.factories import make_staff
from tests.graphql.client import graphql_client
from tests.payments.online.refund_helpers import Fakes, local_gateways, paid_at_fake, paid_order

ALIPAY, WECHAT = PaymentChannel.alipay, PaymentChannel.wechat
TZ = "Asia/Shanghai"


def today() -> date:
    return utcnow().astimezone(as_zone(TZ)).date()


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fakes]:
    with local_gateways(tmp_path_factory.mktemp("reconcile-merchants")) as running:
        yield running


@pytest.fixture(scope="module")
async def books(committed_sessions: async_sessionmaker[AsyncSession], fakes: Fakes) -> dict[str, Any]:
    """Today's Alipay: 20.00 paid and 5.00 of it refunded (both sides agree); 40.00 in our
    books only; 7.77 paid at the gateway and never credited; 30.00 ours, 30.01 theirs.
    Today's WeChat: 15.00 (v3) and 8.00 (v2) paid, 3.00 of the first refunded."""
    async with transaction(committed_sessions) as session:
        served: Served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    household = served.household.id
    assert household is not None
    kept: dict[str, Any] = {"served": served}

    async def pay(channel: PaymentChannel, fen: int, **options: Any) -> Any:
        order, payment = await paid_at_fake(committed_sessions, fakes, account_id=served.account_id,
                                            household_id=household, channel=channel, fen=fen, **options)
        return order, payment

    matched, matched_payment = await pay(ALIPAY, 2000)
    await refund_online(committed_sessions, fakes.services, account_id=served.account_id, amount_fen=500,
                        reason="错缴", by="收费员", now=utcnow, payment_id=matched_payment.id)
    async with transaction(committed_sessions) as session:
        ours_only, _ = await paid_order(session, account_id=served.account_id, household_id=household, channel=ALIPAY,
                                        fen=4000, at=utcnow())
    theirs_only, _ = await pay(ALIPAY, 777, credit=False)
    differs, _ = await pay(ALIPAY, 3000, gateway_fen=3001)
    kept.update(matched=matched.out_trade_no, ours_only=ours_only.out_trade_no, theirs_only=theirs_only.out_trade_no,
                differs=differs.out_trade_no)

    _, wechat_payment = await pay(WECHAT, 1500)
    await pay(WECHAT, 800, merchant="legacy")
    await refund_online(committed_sessions, fakes.services, account_id=served.account_id, amount_fen=300,
                        reason="错缴", by="收费员", now=utcnow, payment_id=wechat_payment.id)
    await query_open_refunds(committed_sessions, fakes.services, now=lambda: utcnow() + timedelta(minutes=1))
    return kept


async def test_a_day_with_one_mismatch_of_each_kind(committed_sessions: async_sessionmaker[AsyncSession],
                                                     fakes: Fakes, books: dict[str, Any]) -> None:
    done = await reconcile_day(committed_sessions, fakes.services, channel=ALIPAY, day=today(), by="tester",
                               now=utcnow, tz=TZ)

    found = sorted((m.kind, m.out_trade_no, m.our_fen, m.their_fen) for m in done.mismatches)
    assert found == sorted([(MismatchKind.amount_differs, books["differs"], 3000, 3001),
                            (MismatchKind.missing_theirs, books["ours_only"], 4000, None),
                            (MismatchKind.missing_ours, books["theirs_only"], None, 777)])
    [unknown] = [m for m in done.mismatches if m.kind is MismatchKind.missing_ours]
    assert unknown.detail == "ours: payment created, 777 fen, not booked"
    run = done.run
    assert (run.outcome, run.mismatch_count, run.merchants) == (ReconciliationOutcome.mismatched, 3, "demo")
    # Ours: 20 + 40 + 30 paid, 5 refunded; theirs: 20 + 7.77 + 30.01 paid, 5 refunded.
    assert (run.our_count, run.our_fen, run.their_count, run.their_fen) == (4, 8500, 4, 5278)


async def test_a_wechat_day_whose_refund_settled_matches(committed_sessions: async_sessionmaker[AsyncSession],
                                                          fakes: Fakes, books: dict[str, Any]) -> None:
    done = await reconcile_day(committed_sessions, fakes.services, channel=WECHAT, day=today(), by="tester",
                               now=utcnow, tz=TZ)

    assert done.run.outcome is ReconciliationOutcome.matched and done.mismatches == ()
    assert (done.run.our_count, done.run.our_fen, done.run.their_count, done.run.their_fen) == (3, 2000, 3, 2000)
    assert done.run.merchants == "demo,legacy,certified"


async def test_a_statement_that_cannot_be_fetched_fails_the_run_and_compares_nothing(
        committed_sessions: async_sessionmaker[AsyncSession], fakes: Fakes, books: dict[str, Any]) -> None:
    nowhere = fakes.alipay_settings.model_copy(update={"url": "http://127.0.0.1:9/gateway.do", "timeout_s": 2})

    def unreachable(merchant: Any) -> Any:
        assert isinstance(merchant, AlipayMerchant)
        return AlipayGateway(merchant, nowhere)

    services = {SERVICE: OnlinePayments(fakes.online.merchants, factory=unreachable)}
    done = await reconcile_day(committed_sessions, services, channel=ALIPAY, day=today(), by="t", now=utcnow, tz=TZ)

    assert done.run.outcome is ReconciliationOutcome.failed and done.mismatches == ()
    assert (done.run.error or "").startswith("demo: ")


def test_the_cli_prints_the_mismatches_as_json_and_a_table_and_exits_1(
        database_url: str, fakes: Fakes, books: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.payments.online import cli

    monkeypatch.setattr(cli, "_services", lambda settings, domains, sessions: fakes.services)

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
    day = today().isoformat()

    as_json = runner.invoke(app, ["pay", "reconcile", "--date", day, "--channel", "alipay", "--json"], obj=Host())

    assert as_json.exit_code == 1, as_json.output
    printed = json.loads(as_json.stdout)
    assert (printed["outcome"], printed["day"], printed["merchants"]) == ("mismatched", day, ["demo"])
    assert sorted((m["kind"], m["out_trade_no"], m["ours_fen"], m["theirs_fen"]) for m in printed["mismatches"]) == \
        sorted([("amount_differs", books["differs"], 3000, 3001), ("missing_ours", books["theirs_only"], None, 777),
                ("missing_theirs", books["ours_only"], 4000, None)])
    as_table = runner.invoke(app, ["pay", "reconcile", "--date", day, "--channel", "alipay"], obj=Host())
    assert as_table.exit_code == 1 and "amount_differs" in as_table.stdout and books["theirs_only"] in as_table.stdout
    matched = runner.invoke(app, ["pay", "reconcile", "--date", day, "--channel", "wechat", "--json"], obj=Host())
    assert matched.exit_code == 0 and json.loads(matched.stdout)["mismatches"] == []
    # Nothing on either side: matched.
    empty = runner.invoke(app, ["pay", "reconcile", "--date", "2026-01-01", "--channel", "alipay"], obj=Host())
    assert empty.exit_code == 0, empty.output
    refused = runner.invoke(app, ["pay", "reconcile", "--date", day, "--channel", "bank"], obj=Host())
    assert refused.exit_code == 2


RUNS = """
query($channel: PaymentChannel, $from: Date, $to: Date) {
  reconciliationRuns(channel: $channel, from: $from, to: $to, first: 5) {
    totalCount
    edges { node { channel day outcome ourNet theirNet mismatchCount
                   mismatches { kind line outTradeNo ours theirs detail } } }
  }
}"""


async def test_the_report_lists_the_runs_with_their_mismatches(
        database_url: str, committed_sessions: async_sessionmaker[AsyncSession], fakes: Fakes,
        books: dict[str, Any]) -> None:
    await reconcile_day(committed_sessions, fakes.services, channel=ALIPAY, day=today(), by="tester", now=utcnow, tz=TZ)
    served: Served = books["served"]
    async with transaction(committed_sessions) as session:
        area = await session.get(Area, served.household.area_id)
        assert area is not None
        reader = await make_staff(session, permissions={"payments:read"}, areas=[area])
        outsider = await make_staff(session, permissions={"counter:collect"}, areas=[area])
    day = today().isoformat()

    async with graphql_client(database_url) as api:
        listed = await api.execute(RUNS, {"channel": "alipay", "from": day, "to": day},
                                   token=await api.login(reader.username, reader.password))
        refused = await api.execute(RUNS, {}, token=await api.login(outsider.username, outsider.password))

    runs = listed["data"]["reconciliationRuns"]
    newest = runs["edges"][0]["node"]
    assert runs["totalCount"] >= 1 and {e["node"]["channel"] for e in runs["edges"]} == {"alipay"}
    assert (newest["day"], newest["outcome"], newest["ourNet"], newest["theirNet"], newest["mismatchCount"]) == (
        day, "mismatched", "85.00", "52.78", 3)
    assert sorted((m["kind"], m["ours"], m["theirs"]) for m in newest["mismatches"]) == [
        ("amount_differs", "30.00", "30.01"), ("missing_ours", None, "7.77"), ("missing_theirs", "40.00", None)]
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN" and refused["data"] is None


async def test_the_daily_job_reconciles_yesterday_of_each_configured_channel(
        committed_sessions: async_sessionmaker[AsyncSession], fakes: Fakes, books: dict[str, Any]) -> None:
    from backend.domain import load
    from backend.domains import installed
    from backend.jobs import declared_jobs, runtime_for
    from backend.settings import Settings

    [job] = [job for job in declared_jobs(installed()) if job.name == "reconcile"]
    run = load(job.run)
    # The worker's runtime, its clock a day on: "yesterday" is the gateways' today.
    tomorrow = utcnow() + timedelta(days=1)
    runtime = dataclasses.replace(runtime_for(Settings(), committed_sessions, clock=lambda: tomorrow),
                                  services=fakes.services)

    said = await run(runtime, {})

    day = today().isoformat()
    assert said == [f"alipay {day}: mismatched (3 mismatches)", f"wechat {day}: matched (0 mismatches)"]
    async with committed_sessions() as session:
        runs = (await session.execute(text(
            "SELECT channel, outcome, mismatch_count, run_by FROM reconciliation_runs WHERE day = :d "
            "ORDER BY id DESC LIMIT 2"), {"d": today()})).all()
    assert sorted(tuple(r) for r in runs) == [("alipay", "mismatched", 3, runtime.actor.name),
                                             ("wechat", "matched", 0, runtime.actor.name)]
