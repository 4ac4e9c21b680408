"""The test domain's one declaration: everything it adds to the host."""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Check, Domain, Job
from backend.events.service import Handler
from tests.sample_domain.settings import NotesSettings

DOMAIN = Domain(
    name="notes",
    title="抄表便签",
    schema="tests.sample_domain.schema",
    routes="tests.sample_domain.http:routes",
    menus=(
        Menu("notes", "抄表便签", "Reading notes", (
            _p("notes:read", "查看便签", "View notes"),
            _p("notes:write", "写便签", "Write notes"),
        ), ("staff_mobile",)),
    ),
    demo_grants={"repair": frozenset({"notes:read", "notes:write"})},
    operations=(Operation("writeNote", "写便签", "Write a note", "notes"),),
    jobs=(
        Job("notes.tally", "tests.sample_domain.jobs:tally", cron="30 2 * * *", permissions=frozenset({"notes:read"}),
            description="Count yesterday's notes"),
    ),
    handlers=(Handler("notes.written", "notes.tally_note", "tests.sample_domain.handlers:tally_note",
                      permissions=frozenset({"notes:read"})),),
    events=("tests.sample_domain.events",),
    services="tests.sample_domain.service:offered",
    checks=(Check("notes.greeting", "tests.sample_domain.checks:greeting", "The notes domain answers"),),
    commands={"notes": "tests.sample_domain.cli:notes_app"},
    settings=NotesSettings,
)
