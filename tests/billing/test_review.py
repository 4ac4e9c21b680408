"""Reading review (抄表审核): who is held and why, re-running adds nothing, each decision
(approve, adjust through the readings domain, estimate, reopen), deciding twice refused,
what the billing run reads, and through GraphQL the list's scope and the audit entries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.alarms.models import Alarm, AlarmKind, AlarmStatus, AlarmSubjectKind
from backend.archives.service import assign_meter
from backend.billing import review
from backend.billing import service as tariffs
from backend.billing.accounts import AccountTerms, open_account
from backend.billing.models import BillingMode, ReviewState
from backend.clock import utcnow
from backend.db import session_factory
from backend.errors import DomainError, ErrorCode
from backend.graphql.relay import encode_id
from backend.readings.usage import usage_between
from tests.billing.factories import Served, at, ingest, served_household, tariff
from tests.factories import make_area_tree, make_household, make_staff
from tests.graphql.client import GraphQLClient, graphql_client
from tests.readings.factories import make_meter

PERIOD = date(2026, 10, 1)
NOW = at(2026, 11, 5, 10)


async def postpaid(session: AsyncSession, readings: list[tuple[datetime, str]]) -> Served:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 8, 1), mode=BillingMode.postpaid)
    assert served.meter.id is not None
    if readings:
        await ingest(session, served.meter.id, readings, now=NOW)
    return served


async def alarm(session: AsyncSession, meter_id: int | None, *, opened: datetime, closed: datetime | None) -> None:
    assert meter_id is not None
    session.add(Alarm(subject_kind=AlarmSubjectKind.meter, subject_id=meter_id, kind=AlarmKind.high_use,
                      status=AlarmStatus.closed if closed else AlarmStatus.open, opened_at=opened,
                      last_seen_at=closed or opened, closed_at=closed))
    await session.flush()


@dataclass
class Period:
    clean: Served  # read on Oct 30; an alarm closed before October
    flagged: Served  # read on Oct 30; a high-use alarm open Oct 10 – 12
    silent: Served  # last read Oct 20
    history: Served  # last read Oct 20, read since September (something to estimate from)

    @property
    def ids(self) -> list[int]:
        return [s.account_id for s in (self.clean, self.flagged, self.silent, self.history)]


async def make_period(session: AsyncSession) -> Period:
    clean = await postpaid(session, [(at(2026, 10, 1), "10"), (at(2026, 10, 30), "40")])
    await alarm(session, clean.meter.id, opened=at(2026, 9, 1), closed=at(2026, 9, 20))
    flagged = await postpaid(session, [(at(2026, 10, 1), "10"), (at(2026, 10, 30), "40")])
    await alarm(session, flagged.meter.id, opened=at(2026, 10, 10), closed=at(2026, 10, 12))
    silent = await postpaid(session, [(at(2026, 10, 1), "10"), (at(2026, 10, 20), "30")])
    history = await postpaid(session, [(at(2026, 9, 1), "0"), (at(2026, 10, 1), "30"), (at(2026, 10, 20), "49")])
    created = await review.prepare_review(session, period=PERIOD, now=NOW)
    assert created >= 3
    return Period(clean, flagged, silent, history)


async def review_of(session: AsyncSession, served: Served) -> int:
    return int((await session.execute(text("SELECT id FROM reading_reviews WHERE account_id = :a AND period = :p"),
                                      {"a": served.account_id, "p": PERIOD})).scalar_one())


async def test_alarmed_and_silent_accounts_are_held_and_a_clean_one_is_billable(session: AsyncSession) -> None:
    period = await make_period(session)

    held = {h.account_id: h for h in await review.held_accounts(session, period=PERIOD, account_ids=period.ids)}
    assert set(held) == {period.flagged.account_id, period.silent.account_id, period.history.account_id}
    assert held[period.flagged.account_id].alarm_kinds == ["high_use"]
    assert held[period.flagged.account_id].missing_reading is False
    assert held[period.silent.account_id].alarm_kinds == []
    assert held[period.silent.account_id].missing_reading is True
    assert await review.billable_accounts(session, period=PERIOD, account_ids=period.ids) == [period.clean.account_id]
    # Re-running adds nothing. November (not prepared) holds the same accounts by their
    # October review: an earlier period is decided (and billed) first. September holds nobody.
    assert await review.prepare_review(session, period=PERIOD, now=NOW) == 0
    november = await review.held_accounts(session, period=date(2026, 11, 1), account_ids=period.ids)
    assert [(h.account_id, h.review_id) for h in november] == [(h.account_id, h.review_id) for h in held.values()]
    assert await review.billable_accounts(session, period=date(2026, 11, 1), account_ids=period.ids) == [
        period.clean.account_id]
    assert await review.held_accounts(session, period=date(2026, 9, 1), account_ids=period.ids) == []


async def test_approving_makes_the_account_billable_and_a_second_decision_is_refused(session: AsyncSession) -> None:
    period = await make_period(session)
    review_id = await review_of(session, period.flagged)

    approved = await review.approve_review(session, review_id=review_id, reason="告警已核实", by="审核员", now=NOW,
                                           scope_patterns=None)

    assert approved.state is ReviewState.approved and approved.decided_by == "审核员"
    assert period.flagged.account_id in await review.billable_accounts(session, period=PERIOD, account_ids=period.ids)
    with pytest.raises(DomainError) as refused:
        await review.estimate_review(session, review_id=review_id, reason=None, by="审核员", now=NOW, scope_patterns=None)
    assert refused.value.code is ErrorCode.REVIEW_DECIDED
    # Re-running the preparation never resets a decided row.
    await review.prepare_review(session, period=PERIOD, now=NOW)
    assert period.flagged.account_id in await review.billable_accounts(session, period=PERIOD, account_ids=period.ids)
    # Reopened, it is held again and can be decided again.
    await review.reopen_review(session, review_id=review_id, reason="重新核对", by="主管", now=NOW, scope_patterns=None)
    assert period.flagged.account_id not in await review.billable_accounts(session, period=PERIOD,
                                                                             account_ids=period.ids)


async def test_adjusting_writes_the_period_end_reading_that_usage_sees(session: AsyncSession) -> None:
    period = await make_period(session)
    review_id = await review_of(session, period.silent)
    meter_id = period.silent.meter.id
    assert meter_id is not None

    adjusted = await review.adjust_review(session, review_id=review_id, meter_id=meter_id, total_m3=Decimal("52"),
                                          reason="现场补抄", by="审核员", now=NOW, scope_patterns=None)

    assert adjusted.state is ReviewState.adjusted and adjusted.decision_reason == "现场补抄"
    assert adjusted.readings == [{"meter_id": meter_id, "read_at": at(2026, 11, 1).isoformat(), "total_m3": "52.0000",
                                  "quality": "manual"}]
    usage = await usage_between(session, meter_ids=[meter_id], start=at(2026, 10, 1), end=at(2026, 11, 1))
    assert usage[meter_id] == Decimal(42)


async def test_adjusting_needs_a_reason_and_a_meter_of_the_household(session: AsyncSession) -> None:
    period = await make_period(session)
    review_id = await review_of(session, period.silent)
    for meter_id, reason, code in ((period.silent.meter.id, " ", ErrorCode.REQUIRED),
                                   (period.clean.meter.id, "补抄", ErrorCode.NOT_FOUND)):
        assert meter_id is not None
        with pytest.raises(DomainError) as refused:
            await review.adjust_review(session, review_id=review_id, meter_id=meter_id, total_m3=Decimal(50),
                                       reason=reason, by="审核员", now=NOW, scope_patterns=None)
        assert refused.value.code is code
    state = (await session.execute(text("SELECT state FROM reading_reviews WHERE id = :i"), {"i": review_id})).scalar()
    assert state == "pending"


async def test_estimating_writes_an_estimated_reading_on_the_periods_last_day(session: AsyncSession) -> None:
    period = await make_period(session)
    review_id = await review_of(session, period.history)
    meter_id = period.history.meter.id

    estimated = await review.estimate_review(session, review_id=review_id, reason=None, by="审核员", now=NOW,
                                             scope_patterns=None)

    assert estimated.state is ReviewState.estimated
    [written] = estimated.readings
    assert written["quality"] == "estimated" and written["meter_id"] == meter_id
    stored = (await session.execute(text(
        "SELECT quality, total_m3 FROM readings WHERE meter_id = :m AND read_at = :t"),
        {"m": meter_id, "t": datetime.fromisoformat(written["read_at"])})).one()
    assert stored.quality == "estimated" and Decimal(30) < stored.total_m3 < Decimal(70)
    assert period.history.account_id in await review.billable_accounts(session, period=PERIOD, account_ids=period.ids)


async def test_the_page_lists_the_held_households_with_their_meters_and_counts_them(session: AsyncSession) -> None:
    period = await make_period(session)
    area_id = period.silent.household.area_id

    found = await review.review_page(session, period=PERIOD, area_id=area_id, scope_patterns=None, offset=0, limit=10)

    assert found.total == 1
    [row] = found.rows
    assert (row.account_no, row.household_name) == (period.silent.household.account_no, "王芳")
    assert row.review.state is ReviewState.pending and row.review.missing_reading is True
    assert [(m.meter_id, m.last_total_m3) for m in row.meters] == [(period.silent.meter.id, Decimal(30))]
    past = await review.review_page(session, period=PERIOD, area_id=area_id, scope_patterns=None, offset=5, limit=10)
    assert (past.rows, past.total) == ([], 1)


# --------------------------------------------------------------------------- GraphQL

LIST = """
query($period: String!, $state: ReviewState) {
  readingReviews(period: $period, state: $state, first: 50) { totalCount
    edges { node { id accountNo householdName period state alarmKinds missingReading meters { code lastTotalM3 } } } }
}"""
PREPARE = "mutation($p: String!) { prepareReadingReview(period: $p) { created errors { code } } }"
ADJUST = """
mutation($id: ID!, $meter: ID!, $reason: String!) {
  adjustReading(reviewId: $id, meterId: $meter, totalM3: "35", reason: $reason) {
    review { state decidedBy decisionReason readings { totalM3 quality } } errors { field code } }
}"""
APPROVE = "mutation($id: ID!) { approveReading(reviewId: $id) { review { state } errors { field code } } }"


@dataclass
class World:
    period: str
    east_token: str
    west_review: str
    east_review: str
    east_meter: str


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine, database_url: str) -> World:
    today = utcnow().date()
    first = (today.replace(day=1) - timedelta(days=40)).replace(day=1)  # two periods back: the days are over
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        east_clerk = await make_staff(session, permissions={"review:read", "review:decide"}, areas=[tree.east])
        raw = tariff()
        await tariffs.save_tariff(session, raw=raw)
        ids: dict[str, tuple[int, int]] = {}
        for label, area in (("east", tree.east_community), ("west", tree.west_community)):
            household = await make_household(session, area=area, name=f"{label}户")
            meter = await make_meter(session, area_id=area.id, install_date=None)
            assert household.id is not None and meter.id is not None
            opened = datetime.combine(first, datetime.min.time(), tzinfo=at(2026, 1, 1).tzinfo) - timedelta(days=30)
            await assign_meter(session, meter_id=meter.id, household_id=household.id, valid_from=opened,
                               start_reading=Decimal(0))
            account = await open_account(session, household_id=household.id, mode=BillingMode.postpaid,
                                         terms=AccountTerms(tariff_code=raw["code"]), now=opened, by="测试")
            assert account.id is not None
            await ingest(session, meter.id, [(opened + timedelta(days=35), "12")], now=utcnow())
            ids[label] = (account.id, meter.id)
    async with graphql_client(database_url) as client:
        token = await client.login(east_clerk.username, east_clerk.password)
        period = f"{first:%Y-%m}"
        async with session_factory(committed_engine)() as session, session.begin():
            await review.prepare_review(session, period=first, now=utcnow())
            found = {row.account_id: row.id for row in (await session.execute(text(
                "SELECT account_id, id FROM reading_reviews WHERE period = :p"), {"p": first})).all()}
    return World(period, token, encode_id("ReadingReview", found[ids["west"][0]]),
                 encode_id("ReadingReview", found[ids["east"][0]]), encode_id("Meter", ids["east"][1]))


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


async def call(client: GraphQLClient, token: str, document: str, variables: dict[str, Any]) -> Any:
    result = await client.execute(document, variables, token=token)
    assert "errors" not in result, result["errors"]
    return result["data"]


async def test_the_list_shows_only_reviews_in_scope_and_others_are_not_found(world: World, client: GraphQLClient) -> None:
    found = await call(client, world.east_token, LIST, {"period": world.period})
    nodes = [edge["node"] for edge in found["readingReviews"]["edges"]]
    assert [node["id"] for node in nodes] == [world.east_review]
    assert nodes[0]["missingReading"] is True and nodes[0]["meters"][0]["lastTotalM3"] == "12.0000"

    refused = await call(client, world.east_token, APPROVE, {"id": world.west_review})
    assert refused["approveReading"]["errors"] == [{"field": "reviewId", "code": "NOT_FOUND"}]


async def test_adjusting_through_graphql_is_audited_and_a_second_decision_refused(
        world: World, client: GraphQLClient, committed_engine: AsyncEngine) -> None:
    done = await call(client, world.east_token, ADJUST, {"id": world.east_review, "meter": world.east_meter,
                                                         "reason": "表坏, 现场补抄"})
    assert done["adjustReading"]["errors"] == []
    assert done["adjustReading"]["review"]["state"] == "adjusted"
    assert done["adjustReading"]["review"]["readings"] == [{"totalM3": "35.0000", "quality": "manual"}]

    again = await call(client, world.east_token, APPROVE, {"id": world.east_review})
    assert again["approveReading"]["errors"] == [{"field": "reviewId", "code": "REVIEW_DECIDED"}]
    async with committed_engine.connect() as connection:
        rows = (await connection.execute(text(
            "SELECT action, module, success FROM audit_log WHERE action IN ('adjustReading', 'approveReading') "
            "ORDER BY id"))).all()
    # The last two (the scope test's refusal may come before them).
    assert [tuple(row) for row in rows][-2:] == [("adjustReading", "review", True), ("approveReading", "review", False)]


async def test_review_plans_its_statements_for_their_values_however_often_a_connection_runs_them(
        session: AsyncSession) -> None:
    # From the sixth execution of a prepared statement PostgreSQL may reuse a generic plan:
    # for review's optional filters that plan walks every account (8 s instead of 1 s at
    # 200k accounts). A job worker's pooled connection runs the same statements every period.
    period = await make_period(session)
    plans_query = text(  # the connection's prepared statements (earlier tests' too: counted as a difference)
        "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0) FROM pg_prepared_statements "
        "WHERE statement LIKE '%reading_reviews%' AND statement NOT LIKE '%pg_prepared_statements%'")
    generic_before, custom_before = (await session.execute(plans_query)).one()
    for _ in range(8):
        await review.prepare_review(session, period=PERIOD, now=NOW, account_ids=period.ids)
        await review.held_accounts(session, period=PERIOD, account_ids=period.ids)
        await review.billable_accounts(session, period=PERIOD, account_ids=period.ids)
    generic, custom = (await session.execute(plans_query)).one()
    assert generic - generic_before == 0 and custom - custom_before >= 24
    # The caller's transaction keeps its own setting.
    assert (await session.execute(text("SELECT current_setting('plan_cache_mode')"))).scalar_one() == "auto"
