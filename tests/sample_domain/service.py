"""The notes domain's rules: plain async Python, no framework."""

from __future__ import annotations

from typing import Any

from backend.errors import BadUserInput
from backend.settings import Settings


class EmptyNote(BadUserInput):
    message = "便签不能为空"
    message_en = "A note cannot be empty"


def checked_note(text: str, *, max_chars: int) -> str:
    """The note as stored: trimmed, at most ``max_chars``; an empty note is refused."""
    note = text.strip()[:max_chars]
    if not note:
        raise EmptyNote(field="text")
    return note


def greeting(settings: Settings) -> str:
    return f"便签服务 ({settings.timezone})"


def offered(settings: Settings) -> dict[str, Any]:
    """Services the notes domain offers other domains: a greeting maker."""
    return {"notes_greeting": lambda: greeting(settings)}
