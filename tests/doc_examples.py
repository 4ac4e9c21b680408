"""The examples of a Markdown page, so a page's queries and outputs are the ones tested.

A screen page (``docs/screens/*.md``) writes each example as a ```graphql block (the
query) followed by a ```json block (its output, exactly as the API answers it for the
page's world). A test reads both from the page with :func:`examples` and runs the query,
so the page cannot drift from the API: a changed field or figure fails the test.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Example:
    """One query of a page and the output the page claims for it."""

    query: str
    output: Any


def blocks(page: str | Path, language: str) -> list[str]:
    """The fenced blocks of one language, in page order (``page`` relative to the repo)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [body for lang, body in _BLOCK.findall(text) if lang == language]


def examples(page: str | Path) -> list[Example]:
    """Each ```graphql block with the ```json block right after it."""
    text = (ROOT / page).read_text(encoding="utf-8")
    found: list[Example] = []
    pending: str | None = None
    for lang, body in _BLOCK.findall(text):
        if lang == "graphql":
            pending = body
        elif lang == "json" and pending is not None:
            found.append(Example(pending, json.loads(body)))
            pending = None
    return found
