"""The notes domain's settings group: ``SHUIWU_NOTES_*``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NotesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHUIWU_NOTES_", extra="ignore", frozen=True)

    # A note longer than this is cut (a field note, not a report).
    max_chars: int = Field(default=200, ge=1, le=2000)
