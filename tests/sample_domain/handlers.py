"""The notes domain's handler of its own event: it keeps a tally of written notes."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from backend.events.service import Event, payload_of
from backend.runtime import Runtime
from tests.sample_domain.events import NoteWritten

HANDLED: list[tuple[int, NoteWritten, str]] = []


async def tally_note(runtime: Runtime, session: AsyncSession, event: Event) -> None:
    HANDLED.append((event.id, payload_of(event, NoteWritten), runtime.actor.name))
