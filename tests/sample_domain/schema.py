"""The notes domain's GraphQL: a query, a mutation, and a field on the archives'
Household (through the extension point, without archives importing this)."""

from __future__ import annotations

from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.events.service import emit_event
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.extend import TypeExtension
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Requires
from tests.sample_domain import service
from tests.sample_domain.events import NoteWritten


@strawberry.type
class Query:
    @strawberry.field(permission_classes=[Requires("notes:read")], description="The notes service's greeting.")
    def notes_greeting(self, info: Info) -> str:
        context: Context = info.context
        return context.services["notes_greeting"]()  # type: ignore[no-any-return]


@strawberry.type
class NotePayload:
    note: str | None
    errors: list[UserError]


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=[Requires("notes:write")], description="Check and keep a reading note.")
    async def write_note(self, info: Info, text: str) -> NotePayload:
        context: Context = info.context
        limits = context.services["settings.notes"]  # the domain's settings group

        async def work(session: AsyncSession) -> str:
            note = service.checked_note(text, max_chars=limits.max_chars)
            await emit_event(session, "notes.written", NoteWritten(chars=len(note), by=context.caller.name))
            return note

        return await run_mutation(
            info, action="writeNote", describe=lambda note: "写便签",
            payload=lambda note, errors: NotePayload(note=note, errors=errors), work=work,  # type: ignore[arg-type]
        )


@strawberry.type
class HouseholdNoteFields:
    @strawberry.field(permission_classes=[Requires("notes:read")], description="A note heading for this household.")
    def note_heading(self) -> str:
        household: Any = self  # archives' Household, named below by its GraphQL name
        return f"户号 {household.account_no}"


EXTENSIONS = (TypeExtension("Household", HouseholdNoteFields),)
