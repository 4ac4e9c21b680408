"""The event the notes domain owns."""

from __future__ import annotations

from dataclasses import dataclass

from backend.events.payloads import event_payload


@event_payload("notes.written")
@dataclass(frozen=True, slots=True)
class NoteWritten:
    """A reading note was kept."""

    chars: int
    by: str
