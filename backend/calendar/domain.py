"""The holiday calendar's declaration: a shared layer (its table, ``shuiwu holidays
load|seed``, the demo's seed and its line in ``shuiwu check``). Domains ask it whether a
day is a working day through ``backend.calendar.service``; it imports no business domain."""

from __future__ import annotations

from backend.domain import Check, Domain, PersonalData

DOMAIN = Domain(
    name="calendar",
    title="节假日",
    models=("backend.calendar.models",),
    checks=(Check("calendar.holidays", "backend.calendar.checks:holidays_ahead",
                  description="The current year (and from October the next) has holidays and make-up working days"),),
    commands={"holidays": "backend.calendar.cli:holidays_app"},
    demo="backend.calendar.demo:demo_step",
    personal_data=PersonalData(excluded={"calendar_days.name": "a holiday's name (春节), no person's"}),
)
