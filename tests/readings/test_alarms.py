"""Abnormal meters: each rule fires on a meter planted with its anomaly and not on a
normal one; evaluation is idempotent and closes cleared alarms; people acknowledge and
close alarms within their scope; rules resolve to the most specific one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.archives.models import AreaKind, Meter
from backend.archives.service import (
    MeterChanges,
    MeterModelFields,
    assign_meter,
    create_area,
    replace_meter,
    save_meter_model,
    update_meter,
)
from backend.auth.system import system_actor
from backend.errors import DomainError, ErrorCode, Forbidden, NotFound
from backend.jobs import runtime_for
from backend.readings.alarms.batch import rule_bounds, zero_use_candidates
from backend.readings.alarms.models import AlarmKind, AlarmSeverity, AlarmStatus
from backend.readings.alarms.service import (
    acknowledge_alarm,
    alarm_rules_statement,
    alarm_view,
    close_alarm,
    delete_alarm_rule,
    evaluate_alarms,
    record_read_failures,
    set_alarm_rule,
)
from backend.readings.domain import DOMAIN as READINGS
from backend.readings.entry import enter_reading, estimate_readings
from backend.readings.jobs import evaluate_alarms as evaluate_alarms_job
from backend.readings.models import ValveState
from backend.readings.service import ReadingIn, ingest_readings
from backend.settings import Settings
from tests.factories import make_household
from tests.graphql.test_dataloaders import counted_statements
from tests.readings.factories import make_meter

SHANGHAI = ZoneInfo("Asia/Shanghai")
# The periodic sweep's actor.
SYSTEM = system_actor({"alarms:manage"})
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=SHANGHAI)
TODAY = NOW.date()


def day_at(days_ago: int, hour: int = 8) -> datetime:
    day = TODAY - timedelta(days=days_ago)
    return datetime(day.year, day.month, day.day, hour, tzinfo=SHANGHAI)


async def ingest(session: AsyncSession, readings: Sequence[ReadingIn], *, now: datetime = NOW) -> None:
    result = await ingest_readings(session, readings=readings, source="test", now=now, tz=SHANGHAI)
    assert result.rejected == []


def daily(meter_id: int | None, totals: Sequence[str | int], **extra: Any) -> list[ReadingIn]:
    """One reading a day at 08:00, the last one today, with these register totals."""
    assert meter_id is not None
    count = len(totals)
    return [ReadingIn(meter_id=meter_id, read_at=day_at(count - 1 - index), total_m3=Decimal(str(total)), **extra)
            for index, total in enumerate(totals)]


async def evaluate(session: AsyncSession, meters: Sequence[Meter] | None = None, *, now: datetime = NOW) -> Any:
    return await evaluate_alarms(session, actor=SYSTEM, now=now, tz=SHANGHAI,
                                 meter_ids=None if meters is None else [m.id for m in meters if m.id is not None])


async def live(session: AsyncSession, meter: Meter) -> dict[str, Any]:
    """The meter's live alarms by kind."""
    rows = await session.execute(
        text("SELECT * FROM meter_alarms WHERE meter_id = :m AND status <> 'closed'"), {"m": meter.id})
    return {row.kind: row for row in rows}


async def all_alarms(session: AsyncSession, meter: Meter) -> list[Any]:
    rows = await session.execute(text("SELECT * FROM meter_alarms WHERE meter_id = :m ORDER BY id"), {"m": meter.id})
    return list(rows)


async def alarm_events(session: AsyncSession, kind: str) -> list[dict[str, Any]]:
    rows = await session.execute(text("SELECT payload FROM domain_events WHERE kind = :k ORDER BY id"), {"k": kind})
    return [row.payload for row in rows]


async def valved_model(session: AsyncSession, *, digits: int = 5) -> int:
    model = await save_meter_model(session, fields=MeterModelFields(
        vendor="宁波水表", name=f"LXSY-{digits}-{id(session) % 10000}-{datetime.now().timestamp()}", caliber=20,
        register_digits=digits, has_valve=True, has_battery=True))
    assert model.id is not None
    return model.id


async def with_model(session: AsyncSession, meter: Meter, model_id: int) -> Meter:
    assert meter.id is not None
    return await update_meter(session, meter_id=meter.id, changes=MeterChanges(model_id=model_id))


# --------------------------------------------------------------------------- rules fire


async def test_silent_fires_after_the_threshold_hours_and_not_for_a_recent_meter(session: AsyncSession) -> None:
    quiet, talking, never = await make_meter(session), await make_meter(session), await make_meter(session)
    await ingest(session, [ReadingIn(quiet.id, NOW - timedelta(hours=72), Decimal(5)),  # type: ignore[arg-type]
                           ReadingIn(talking.id, NOW - timedelta(hours=1), Decimal(5))])  # type: ignore[arg-type]

    await evaluate(session)

    alarm = (await live(session, quiet))["silent"]
    assert (alarm.value, alarm.threshold, alarm.status) == (Decimal("72.0000"), Decimal("48.0000"), "open")
    assert await live(session, talking) == {}
    # Installed on 2025-01-01 and never read: silent since its install day.
    assert "silent" in await live(session, never)


async def test_communication_failures_open_at_three_and_a_new_reading_clears_them(session: AsyncSession) -> None:
    failing, flaky = await make_meter(session), await make_meter(session)
    await ingest(session, daily(failing.id, [1, 2]) + daily(flaky.id, [1, 2]))
    for hour in (1, 2, 3):
        await record_read_failures(session, meter_ids=[failing.id, flaky.id] if hour < 3 else [failing.id],  # type: ignore[list-item]
                                   failed_at=NOW + timedelta(hours=hour), reason="timeout")
    # A repeated report of the same failure does not count twice.
    await record_read_failures(session, meter_ids=[failing.id], failed_at=NOW + timedelta(hours=3),  # type: ignore[list-item]
                               reason="timeout")
    later = NOW + timedelta(hours=4)

    await evaluate(session, [failing, flaky], now=later)

    alarm = (await live(session, failing))["communication_failure"]
    assert (alarm.value, alarm.threshold, alarm.detail) == (Decimal(3), Decimal(3), "timeout")
    assert await live(session, flaky) == {}

    # The next successful read ends the run of failures.
    await ingest(session, [ReadingIn(failing.id, later, Decimal(3))], now=later)  # type: ignore[arg-type]
    await evaluate(session, [failing], now=later)
    assert await live(session, failing) == {}
    link = (await session.execute(text("SELECT * FROM meter_link_status WHERE meter_id = :m"), {"m": failing.id})).one()
    assert (link.consecutive_failures, link.last_success_at) == (0, later)


async def test_reverse_flow_fires_when_the_register_goes_down(session: AsyncSession) -> None:
    backwards, forwards = await make_meter(session), await make_meter(session)
    await ingest(session, daily(backwards.id, ["10", "12", "11.5"]) + daily(forwards.id, ["10", "12", "13"]))

    await evaluate(session, [backwards, forwards])

    assert "reverse_flow" in await live(session, backwards)
    assert "reverse_flow" not in await live(session, forwards)


async def test_rollover_is_flagged_when_the_register_wraps(session: AsyncSession) -> None:
    model_id = await valved_model(session, digits=5)
    wrapping = await with_model(session, await make_meter(session), model_id)
    steady = await with_model(session, await make_meter(session), model_id)
    await ingest(session, daily(wrapping.id, ["99990", "99998", "3"], valve_state=ValveState.open)
                 + daily(steady.id, ["10", "12", "13"], valve_state=ValveState.open))

    await evaluate(session, [wrapping, steady])

    assert set(await live(session, wrapping)) == {"rollover"}
    assert await live(session, steady) == {}


async def test_zero_use_needs_an_active_household_and_readings_over_the_days(session: AsyncSession) -> None:
    # A meter serves only households in its own area's subtree: all in one area.
    area = await create_area(session, name="翠湖小区", kind=AreaKind.company)
    idle, busy, vacant = [await make_meter(session, area_id=area.id) for _ in range(3)]
    for meter in (idle, busy):
        household = await make_household(session, area=area)
        await assign_meter(session, meter_id=meter.id, household_id=household.id,  # type: ignore[arg-type]
                           valid_from=day_at(30))
    flat = ["5"] * 10
    await ingest(session, daily(idle.id, flat) + daily(vacant.id, flat)
                 + daily(busy.id, [str(5 + i) for i in range(10)]))

    # The batch itself opened it; the periodic run finds nothing more.
    alarm = (await live(session, idle))["zero_use"]
    assert (await evaluate(session)).opened == 0
    assert (alarm.value, alarm.threshold) == (Decimal(0), Decimal(7))
    assert await live(session, busy) == {}
    assert await live(session, vacant) == {}  # serves no household

    # A batch keeps it while nothing is used, and closes it once water flows again.
    later = NOW + timedelta(hours=2)
    await ingest(session, [ReadingIn(idle.id, later - timedelta(hours=1), Decimal(5))], now=later)  # type: ignore[arg-type]
    assert (await evaluate(session, [idle], now=later)).refreshed == 1
    await ingest(session, [ReadingIn(idle.id, later, Decimal("5.5"))], now=later)  # type: ignore[arg-type]
    assert "zero_use" not in await live(session, idle)  # closed by the batch's own evaluation


async def test_a_batch_opens_zero_use_only_where_the_register_stood_still_over_the_window(
    session: AsyncSession,
) -> None:
    """Each meter serves a household and is read daily for 10 days, the last today: one
    stood still all along, one last moved 8 days ago (before the 7-day window), one 3
    days ago, and one was first read 5 days ago (nothing before the window to compare)."""
    area = await create_area(session, name="翠湖小区", kind=AreaKind.company)
    still, moved_before, moved_within, new = [await make_meter(session, area_id=area.id) for _ in range(4)]
    for meter in (still, moved_before, moved_within, new):
        household = await make_household(session, area=area)
        await assign_meter(session, meter_id=meter.id, household_id=household.id,  # type: ignore[arg-type]
                           valid_from=day_at(30))

    await ingest(session, daily(still.id, ["5"] * 10) + daily(moved_before.id, ["5", "6"] + ["7"] * 8)
                 + daily(moved_within.id, ["5"] * 6 + ["6"] * 4) + daily(new.id, ["5"] * 5))

    assert set(await live(session, still)) == {"zero_use"}
    assert set(await live(session, moved_before)) == {"zero_use"}
    assert await live(session, moved_within) == {}
    assert await live(session, new) == {}
    # The batch decided as the periodic run over every meter decides.
    assert (await evaluate(session)).opened == 0


async def test_zero_use_from_the_window_sliding_at_midnight_opens_in_the_periodic_run(session: AsyncSession) -> None:
    """Used water 6 days ago, nothing since, read today: not 7 days of zero use yet. After
    midnight, with no new reading, the used day has left the window: no batch carries the
    meter, and the next periodic run (every 15 minutes) opens the alarm."""
    area = await create_area(session, name="翠湖小区", kind=AreaKind.company)
    meter = await make_meter(session, area_id=area.id)
    household = await make_household(session, area=area)
    await assign_meter(session, meter_id=meter.id, household_id=household.id,  # type: ignore[arg-type]
                       valid_from=day_at(30))
    await ingest(session, daily(meter.id, ["5"] * 3 + ["6"] * 7))
    assert await live(session, meter) == {}
    assert (await evaluate(session)).opened == 0

    after_midnight = datetime.combine(TODAY + timedelta(days=1), datetime.min.time(), SHANGHAI) + timedelta(minutes=15)
    assert (await evaluate(session, now=after_midnight)).opened == 1
    assert set(await live(session, meter)) == {"zero_use"}


async def test_zero_use_costs_a_batch_one_statement_and_only_when_a_meter_used_nothing_today(
    session: AsyncSession, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    area = await create_area(session, name="翠湖小区", kind=AreaKind.company)
    still = "(l.effective_total - before.effective_total)"  # the batch's zero-use pre-check (alarms/batch.py)
    using = [await make_meter(session, area_id=area.id) for _ in range(3)]
    idle = [await make_meter(session, area_id=area.id) for _ in range(3)]
    await ingest(session, [reading for meter in using for reading in daily(meter.id, ["5", "6", "7"])]
                 + [reading for meter in idle for reading in daily(meter.id, ["5", "6", "6"])])
    later = NOW + timedelta(hours=1)

    with counted_statements(monkeypatch, engine) as statements:
        await ingest(session, [ReadingIn(meter.id, later, Decimal(8)) for meter in using], now=later)  # type: ignore[arg-type]
        after_using = [statement for statement in statements if still in statement]
        await ingest(session, [ReadingIn(meter.id, later, Decimal(6)) for meter in idle], now=later)  # type: ignore[arg-type]
        after_idle = [statement for statement in statements if still in statement]

    assert after_using == []  # every meter used water today: nothing asked
    assert len(after_idle) == 1  # one statement for the batch's idle meters, however many


async def test_a_meter_serving_no_household_never_goes_to_the_zero_use_evaluation(session: AsyncSession) -> None:
    """A pressure gauge's register is always 0 and an unassigned meter serves nobody: the
    batch's pre-check leaves them out, as the rule (an active household's meter) would."""
    area = await create_area(session, name="翠湖小区", kind=AreaKind.company)
    gauge, served = await make_meter(session, area_id=area.id), await make_meter(session, area_id=area.id)
    household = await make_household(session, area=area)
    await assign_meter(session, meter_id=served.id, household_id=household.id, valid_from=day_at(30))  # type: ignore[arg-type]
    await ingest(session, daily(gauge.id, ["0"] * 10) + daily(served.id, ["5"] * 10))

    candidates = await zero_use_candidates(session, idle=[gauge.id, served.id], today=TODAY,  # type: ignore[list-item]
                                           bounds=await rule_bounds(session), already=set())

    assert candidates == {served.id}


async def test_high_use_fires_above_k_times_the_average_and_only_with_history(session: AsyncSession) -> None:
    spiking, steady, new = await make_meter(session), await make_meter(session), await make_meter(session)
    history = [str(i) for i in range(32)]  # 1 m³ a day
    await ingest(session, daily(spiking.id, [*history, "35"]) + daily(steady.id, [*history, "33"])
                 + daily(new.id, ["0", "0", "50"]))

    await evaluate(session, [spiking, steady, new])

    alarm = (await live(session, spiking))["high_use"]
    assert (alarm.value, alarm.threshold) == (Decimal(4), Decimal(3))  # 4 m³ > 3 × 1 m³
    assert "high_use" not in await live(session, steady)
    assert "high_use" not in await live(session, new)  # average 0: no baseline


async def test_battery_low_by_voltage_or_status_bit(session: AsyncSession) -> None:
    weak, fine, flagged = await make_meter(session), await make_meter(session), await make_meter(session)
    await ingest(session, [
        ReadingIn(weak.id, day_at(0), Decimal(1), battery=Decimal("3.10")),  # type: ignore[arg-type]
        ReadingIn(fine.id, day_at(0), Decimal(1), battery=Decimal("3.60")),  # type: ignore[arg-type]
        ReadingIn(flagged.id, day_at(0), Decimal(1), battery=Decimal("3.60"), status_bits=4),  # type: ignore[arg-type]
    ])

    await evaluate(session, [weak, fine, flagged])

    alarm = (await live(session, weak))["battery_low"]
    assert (alarm.value, alarm.threshold) == (Decimal("3.1"), Decimal("3.3"))
    assert await live(session, fine) == {}
    assert "状态位 D2" in (await live(session, flagged))["battery_low"].detail


async def test_valve_abnormal_by_unknown_state_on_a_valved_model_or_status_bits(session: AsyncSession) -> None:
    model_id = await valved_model(session)
    stuck = await with_model(session, await make_meter(session), model_id)
    fine = await with_model(session, await make_meter(session), model_id)
    no_valve_unknown, bits = await make_meter(session), await make_meter(session)
    await ingest(session, [
        ReadingIn(stuck.id, day_at(0), Decimal(1), valve_state=ValveState.unknown),  # type: ignore[arg-type]
        ReadingIn(fine.id, day_at(0), Decimal(1), valve_state=ValveState.open),  # type: ignore[arg-type]
        ReadingIn(no_valve_unknown.id, day_at(0), Decimal(1), valve_state=ValveState.unknown),  # type: ignore[arg-type]
        ReadingIn(bits.id, day_at(0), Decimal(1), status_bits=3),  # type: ignore[arg-type]
    ])

    await evaluate(session, [stuck, fine, no_valve_unknown, bits])

    assert set(await live(session, stuck)) == {"valve_abnormal"}
    assert await live(session, fine) == {}
    assert await live(session, no_valve_unknown) == {}
    assert set(await live(session, bits)) == {"valve_abnormal"}


# --------------------------------------------------------------------------- lifecycle


async def test_evaluating_again_opens_nothing_and_refreshes_the_live_alarms(session: AsyncSession) -> None:
    weak = await make_meter(session)
    await ingest(session, [ReadingIn(weak.id, day_at(0), Decimal(1), battery=Decimal("3.0"))])  # type: ignore[arg-type]

    await evaluate(session, [weak])
    opened_before = len(await alarm_events(session, "alarm.opened"))
    second = await evaluate(session, [weak], now=NOW + timedelta(minutes=15))

    assert (second.opened, second.closed, second.refreshed) == (0, 0, 1)
    assert len(await all_alarms(session, weak)) == 1
    assert (await live(session, weak))["battery_low"].last_seen_at == NOW + timedelta(minutes=15)
    assert len(await alarm_events(session, "alarm.opened")) == opened_before


async def test_one_event_names_every_alarm_an_evaluation_opened(session: AsyncSession) -> None:
    meters = [await make_meter(session) for _ in range(3)]
    before = len(await alarm_events(session, "alarm.opened"))

    # Three readings long overdue: the batch's own evaluation opens three silent alarms.
    await ingest(session, [ReadingIn(m.id, NOW - timedelta(hours=100), Decimal(1)) for m in meters])  # type: ignore[arg-type]

    events = (await alarm_events(session, "alarm.opened"))[before:]
    assert len(events) == 1 and len(events[0]["alarm_ids"]) == 3
    assert (await evaluate(session, meters)).opened == 0


async def test_a_cleared_condition_closes_the_alarm_even_when_acknowledged(session: AsyncSession) -> None:
    weak, other = await make_meter(session), await make_meter(session)
    await ingest(session, [ReadingIn(weak.id, day_at(1), Decimal(1), battery=Decimal("3.0")),  # type: ignore[arg-type]
                           ReadingIn(other.id, day_at(1), Decimal(1), battery=Decimal("3.0"))])  # type: ignore[arg-type]
    await evaluate(session, [weak, other])
    alarm = (await live(session, weak))["battery_low"]
    await acknowledge_alarm(session, alarm_id=alarm.id, by="王工", note="已派单", now=NOW, scope_patterns=None)

    # A new battery: evaluating the meters of the next batch closes the alarm.
    await ingest(session, [ReadingIn(weak.id, day_at(0), Decimal(2), battery=Decimal("3.6"))])  # type: ignore[arg-type]
    await evaluate(session, [weak])

    closed = (await all_alarms(session, weak))[0]
    assert (closed.status, closed.closed_by, closed.close_reason, closed.acknowledged_by) == (
        "closed", "system", "condition cleared", "王工")
    assert "battery_low" in await live(session, other)  # not evaluated this time
    assert closed.id in (await alarm_events(session, "alarm.closed"))[-1]["alarm_ids"]


async def test_a_retired_meter_keeps_nothing_open_after_the_periodic_run(session: AsyncSession) -> None:
    weak = await make_meter(session)
    await ingest(session, [ReadingIn(weak.id, day_at(0), Decimal(1), battery=Decimal("3.0"))])  # type: ignore[arg-type]
    await evaluate(session, [weak])
    await session.execute(text("UPDATE meters SET status = 'retired' WHERE id = :m"), {"m": weak.id})

    await evaluate(session)

    assert await live(session, weak) == {}


# --------------------------------------------------------------------------- people


async def test_acknowledge_then_close_by_a_user(session: AsyncSession) -> None:
    weak = await make_meter(session)
    await ingest(session, [ReadingIn(weak.id, day_at(0), Decimal(1), battery=Decimal("3.0"))])  # type: ignore[arg-type]
    await evaluate(session, [weak])
    alarm_id = (await live(session, weak))["battery_low"].id

    acknowledged = await acknowledge_alarm(session, alarm_id=alarm_id, by="王工", note=" 换电池 ", now=NOW,
                                           scope_patterns=None)
    assert (acknowledged.status, acknowledged.acknowledge_note) == (AlarmStatus.acknowledged, "换电池")
    with pytest.raises(DomainError) as twice:
        await acknowledge_alarm(session, alarm_id=alarm_id, by="王工", note=None, now=NOW, scope_patterns=None)
    closed = await close_alarm(session, alarm_id=alarm_id, by="王工", reason="已更换", now=NOW + timedelta(hours=1),
                               scope_patterns=None)
    with pytest.raises(DomainError) as again:
        await close_alarm(session, alarm_id=alarm_id, by="王工", reason=None, now=NOW, scope_patterns=None)

    assert twice.value.code is ErrorCode.ALARM_ALREADY_ACKNOWLEDGED
    assert (closed.status, closed.closed_by, closed.close_reason) == (AlarmStatus.closed, "王工", "已更换")
    assert again.value.code is ErrorCode.ALARM_ALREADY_CLOSED
    # Closing by hand does not silence the meter: the next run opens a new alarm.
    result = await evaluate(session, [weak])
    assert result.opened == 1 and len(await all_alarms(session, weak)) == 2


async def test_staff_outside_the_area_cannot_see_or_touch_the_alarm(session: AsyncSession) -> None:
    weak = await make_meter(session)
    await ingest(session, [ReadingIn(weak.id, day_at(0), Decimal(1), battery=Decimal("3.0"))])  # type: ignore[arg-type]
    await evaluate(session, [weak])
    alarm_id = (await live(session, weak))["battery_low"].id
    elsewhere = await create_area(session, name="别处", kind=AreaKind.company)
    outside = [elsewhere.path + "%"]

    for attempt in (
        acknowledge_alarm(session, alarm_id=alarm_id, by="x", note=None, now=NOW, scope_patterns=outside),
        close_alarm(session, alarm_id=alarm_id, by="x", reason=None, now=NOW, scope_patterns=outside),
        alarm_view(session, alarm_id=alarm_id, scope_patterns=outside),
    ):
        with pytest.raises(NotFound):
            await attempt

    assert (await live(session, weak))["battery_low"].status == "open"
    inside = await alarm_view(session, alarm_id=alarm_id, scope_patterns=["/%"])
    assert inside.meter_code == weak.code


# --------------------------------------------------------------------------- rules


async def test_the_most_specific_rule_applies_model_before_area(session: AsyncSession) -> None:
    model_id = await valved_model(session)
    plain, modelled = await make_meter(session), await with_model(session, await make_meter(session), model_id)
    other_area = await make_meter(session)
    area_id = plain.area_id
    await update_meter(session, meter_id=modelled.id, changes=MeterChanges(area_id=area_id))  # type: ignore[arg-type]
    # Area rule: 3.0 V; model rule: 3.5 V; model within the area: disabled.
    await set_alarm_rule(session, kind=AlarmKind.battery_low, area_id=area_id, meter_model_id=None, enabled=True,
                         threshold=Decimal("3.0"), severity=AlarmSeverity.info, by="root", now=NOW, scope_patterns=None)
    await set_alarm_rule(session, kind=AlarmKind.battery_low, area_id=None, meter_model_id=model_id, enabled=True,
                         threshold=Decimal("3.5"), severity=AlarmSeverity.critical, by="root", now=NOW,
                         scope_patterns=None)
    await ingest(session, [ReadingIn(m.id, day_at(0), Decimal(1), battery=Decimal("3.2"), valve_state=ValveState.open)  # type: ignore[arg-type]
                           for m in (plain, modelled, other_area)])
    await evaluate(session, [plain, modelled, other_area])

    assert "battery_low" not in await live(session, plain)  # area rule: 3.2 ≥ 3.0
    assert (await live(session, modelled))["battery_low"].severity == "critical"  # model rule beats area rule
    assert (await live(session, other_area))["battery_low"].threshold == Decimal("3.3")  # global default

    await set_alarm_rule(session, kind=AlarmKind.battery_low, area_id=area_id, meter_model_id=model_id, enabled=False,
                         threshold=Decimal("3.5"), severity=AlarmSeverity.critical, by="root", now=NOW,
                         scope_patterns=None)
    await evaluate(session, [modelled])
    assert "battery_low" not in await live(session, modelled)


async def test_rules_are_upserted_checked_and_global_defaults_kept(session: AsyncSession) -> None:
    meter = await make_meter(session)
    first = await set_alarm_rule(session, kind=AlarmKind.silent, area_id=meter.area_id, meter_model_id=None,
                                 enabled=True, threshold=Decimal(24), severity=AlarmSeverity.warning, by="a", now=NOW,
                                 scope_patterns=None)
    second = await set_alarm_rule(session, kind=AlarmKind.silent, area_id=meter.area_id, meter_model_id=None,
                                  enabled=True, threshold=Decimal(12), severity=AlarmSeverity.warning, by="b", now=NOW,
                                  scope_patterns=None)
    assert first.id == second.id and second.threshold == Decimal(12)

    with pytest.raises(DomainError) as fractional:
        await set_alarm_rule(session, kind=AlarmKind.silent, area_id=None, meter_model_id=None, enabled=True,
                             threshold=Decimal("1.5"), severity=AlarmSeverity.warning, by="a", now=NOW,
                             scope_patterns=None)
    assert (fractional.value.code, fractional.value.field) == (ErrorCode.INVALID, "threshold")
    with pytest.raises(DomainError) as beyond_scope:
        await set_alarm_rule(session, kind=AlarmKind.silent, area_id=None, meter_model_id=None, enabled=True,
                             threshold=Decimal(5), severity=AlarmSeverity.warning, by="a", now=NOW,
                             scope_patterns=["/999999/%"])
    assert beyond_scope.value.code is ErrorCode.UNKNOWN_AREA

    rules = (await session.execute(alarm_rules_statement(scope_patterns=None, kind=AlarmKind.silent))).all()
    default = next(rule for rule, _ in rules if rule.area_id is None and rule.meter_model_id is None)
    with pytest.raises(DomainError) as kept:
        await delete_alarm_rule(session, rule_id=default.id, scope_patterns=None)  # type: ignore[arg-type]
    assert kept.value.code is ErrorCode.ALARM_RULE_DEFAULT
    await delete_alarm_rule(session, rule_id=second.id, scope_patterns=None)  # type: ignore[arg-type]
    remaining = (await session.execute(alarm_rules_statement(scope_patterns=None, kind=AlarmKind.silent))).all()
    assert [rule.id for rule, _ in remaining] == [default.id]


async def test_default_rules_are_seeded_for_every_kind(session: AsyncSession) -> None:
    rules = (await session.execute(alarm_rules_statement(scope_patterns=None))).all()
    defaults = {rule.kind: rule.threshold for rule, _ in rules if rule.area_id is None and rule.meter_model_id is None}
    assert defaults[AlarmKind.silent] == Decimal(48)
    assert defaults[AlarmKind.battery_low] == Decimal("3.3")
    assert set(defaults) == set(AlarmKind)


async def test_the_nearest_area_rule_wins_over_its_ancestors_and_a_disabled_one_turns_the_kind_off(
    session: AsyncSession,
) -> None:
    city = await create_area(session, name="城区", kind=AreaKind.company)
    district = await create_area(session, name="东区", kind=AreaKind.district, parent_id=city.id)
    community = await create_area(session, name="翠湖", kind=AreaKind.community, parent_id=district.id)
    beside = await create_area(session, name="东区二", kind=AreaKind.district, parent_id=city.id)
    deep = await make_meter(session, area_id=community.id)
    near = await make_meter(session, area_id=district.id)
    sibling = await make_meter(session, area_id=beside.id)
    for area, threshold in ((city, "3.0"), (district, "3.5")):
        await set_alarm_rule(session, kind=AlarmKind.battery_low, area_id=area.id, meter_model_id=None, enabled=True,
                             threshold=Decimal(threshold), severity=AlarmSeverity.info, by="root", now=NOW,
                             scope_patterns=None)
    await ingest(session, [ReadingIn(m.id, day_at(0), Decimal(1), battery=Decimal("3.2"))  # type: ignore[arg-type]
                           for m in (deep, near, sibling)])
    await evaluate(session, [deep, near, sibling])

    assert (await live(session, deep))["battery_low"].threshold == Decimal("3.5")  # the district, not the city
    assert (await live(session, near))["battery_low"].threshold == Decimal("3.5")
    assert await live(session, sibling) == {}  # the city's 3.0 V: its path only shares a prefix with the district's

    await set_alarm_rule(session, kind=AlarmKind.battery_low, area_id=community.id, meter_model_id=None,
                         enabled=False, threshold=Decimal("3.5"), severity=AlarmSeverity.info, by="root", now=NOW,
                         scope_patterns=None)
    await evaluate(session, [deep, near])
    assert await live(session, deep) == {}
    assert "battery_low" in await live(session, near)


# --------------------------------------------------------------------------- what counts as a reading


async def test_a_manual_reading_keeps_the_battery_and_valve_alarms_of_the_last_actual_one(
    session: AsyncSession,
) -> None:
    meter = await make_meter(session)
    await ingest(session, [ReadingIn(meter.id, day_at(1), Decimal(1), battery=Decimal("3.0"),  # type: ignore[arg-type]
                                     status_bits=3)])
    await evaluate(session, [meter])
    assert set(await live(session, meter)) == {"battery_low", "valve_abnormal"}

    # A field reading by hand reports neither battery nor valve: it says nothing about them.
    await enter_reading(session, meter_id=meter.id, read_at=day_at(0), total_m3=Decimal(2), by="王工",  # type: ignore[arg-type]
                        now=NOW, tz=SHANGHAI, scope_patterns=None)

    alarms = await live(session, meter)
    assert set(alarms) == {"battery_low", "valve_abnormal"}
    assert alarms["battery_low"].value == Decimal("3.0")


async def test_an_estimate_is_no_sign_of_life_for_a_silent_or_failing_meter(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, [ReadingIn(meter.id, day_at(5, 8), Decimal(1)),  # type: ignore[arg-type]
                           ReadingIn(meter.id, day_at(3, 8), Decimal(3))])  # type: ignore[arg-type]
    for hour in (1, 2, 3):
        await record_read_failures(session, meter_ids=[meter.id], failed_at=day_at(2, hour), reason="timeout")  # type: ignore[list-item]
    await evaluate(session)
    assert {"silent", "communication_failure"} <= set(await live(session, meter))

    estimated = await estimate_readings(session, meter_ids=[meter.id], start=day_at(2).date(), end=day_at(1).date(),
                                        now=NOW, tz=SHANGHAI, scope_patterns=None)
    assert estimated.estimated == 2
    await evaluate(session)

    alarms = await live(session, meter)
    assert {"silent", "communication_failure"} <= set(alarms)
    assert alarms["silent"].value == Decimal(76)  # hours since the actual reading, not since the estimate
    link = (await session.execute(text("SELECT * FROM meter_link_status WHERE meter_id = :m"), {"m": meter.id})).one()
    assert link.consecutive_failures == 3


# --------------------------------------------------------------------------- the high-use baseline


async def test_high_use_does_not_fire_on_a_new_meter_whose_first_days_were_partial(session: AsyncSession) -> None:
    area = await create_area(session, name="翠湖", kind=AreaKind.company)
    old, new = await make_meter(session, area_id=area.id), await make_meter(session, area_id=area.id)
    household = await make_household(session, area=area)
    await assign_meter(session, meter_id=old.id, household_id=household.id, valid_from=day_at(40))  # type: ignore[arg-type]
    await ingest(session, [ReadingIn(old.id, day_at(days_ago), Decimal(40 - days_ago))  # type: ignore[arg-type]
                           for days_ago in range(40, 3, -1)])
    # Swapped late in the evening: the new meter's first day holds one reading and its
    # second day nine hours of use.
    await replace_meter(session, old_meter_id=old.id, new_meter_id=new.id, replaced_at=day_at(3, 23),  # type: ignore[arg-type]
                        old_final_reading=Decimal("36.6"), new_initial_reading=Decimal(0), replaced_by="王工")
    await ingest(session, daily(new.id, ["0.4", "1.4", "2.4"]))  # 1 m³ a day, as before the swap

    await evaluate(session, [new])

    assert "high_use" not in await live(session, new)
    baseline = (await session.execute(text("SELECT * FROM meter_usage_baselines WHERE meter_id = :m"),
                                      {"m": new.id})).one()
    assert baseline.average_m3 is None  # under a day of history before yesterday: no baseline yet


async def test_high_use_compares_per_day_usage_for_a_meter_read_every_few_days(session: AsyncSession) -> None:
    spiking, steady = await make_meter(session), await make_meter(session)
    # Read every third day at 1 m³ a day; then 12 m³ (4 a day) or 3 m³ over the last three days.
    history = {days_ago: Decimal(33 - days_ago) for days_ago in range(33, 1, -3)}
    for meter, last in ((spiking, Decimal(12)), (steady, Decimal(3))):
        await ingest(session, [ReadingIn(meter.id, day_at(d), total) for d, total in history.items()]  # type: ignore[arg-type]
                     + [ReadingIn(meter.id, day_at(0), history[3] + last)])  # type: ignore[arg-type]

    await evaluate(session, [spiking, steady])

    baseline = (await session.execute(text("SELECT * FROM meter_usage_baselines WHERE meter_id = :m"),
                                      {"m": spiking.id})).one()
    assert baseline.average_m3 == Decimal("1.0000")
    alarm = (await live(session, spiking))["high_use"]
    assert (alarm.value, alarm.threshold) == (Decimal(4), Decimal(3))
    assert "3.0 天平均" in alarm.detail
    assert await live(session, steady) == {}


async def test_the_scheduled_job_evaluates_every_meter_in_a_transaction_of_its_own(
    committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with committed_sessions() as session, session.begin():
        quiet = await make_meter(session)
    job = next(job for job in READINGS.jobs if job.name == "evaluate_alarms")
    assert job.cron is not None and job.cron.startswith("*/15 ")  # every 15 minutes

    result = await evaluate_alarms_job(runtime_for(Settings(timezone="Asia/Shanghai"), committed_sessions, clock=lambda: NOW), {})

    assert result.opened >= 1
    async with committed_sessions() as session:
        assert "silent" in await live(session, quiet)


async def test_the_sweep_needs_an_actor_who_may_manage_alarms(session: AsyncSession) -> None:
    reader = system_actor({"alarms:read"})

    with pytest.raises(Forbidden):
        await evaluate_alarms(session, actor=reader, now=NOW, tz=SHANGHAI)
