"""The resident app's strings: one JSON catalog per language (zh.json, en.json) with the
same keys. Every user-facing string comes from here; messages of the API's errors come
from the API itself (``message`` / ``messageEn``), so they are not repeated here."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Literal

Language = Literal["zh", "en"]
LANGUAGES: tuple[Language, ...] = ("zh", "en")
LANGUAGE_NAMES: dict[Language, str] = {"zh": "中文", "en": "English"}


@cache
def catalog(language: Language) -> dict[str, str]:
    """The strings of ``language`` by key."""
    strings: dict[str, str] = json.loads(Path(__file__).with_name(f"{language}.json").read_text(encoding="utf-8"))
    return strings


def translate(language: Language, key: str, **values: object) -> str:
    """The string ``key`` in ``language`` with ``values`` filled in; a missing key is a
    bug (KeyError), never a silently shown key."""
    return catalog(language)[key].format(**values)
