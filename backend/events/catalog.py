"""The list of event kinds, their owners and payloads: ``docs/events.md`` is its output.

    python -m backend.events.catalog > docs/events.md

A test fails when the checked-in file drifts from the declarations.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path

import backend
from backend.events.payloads import PayloadType, payload_types

_HEADER = """\
# Domain events

Generated from the payload declarations by `python -m backend.events.catalog > docs/events.md`
(also `shuiwu events list`); a test fails when this file drifts. Do not edit it by hand.

Each kind has one owner, which emits it with `emit_event(session, kind, payload, key=None)`
and declares its payload: a frozen dataclass registered with `@event_payload(kind)` in the
owner's `events.py`. Every other domain only consumes it: a `Handler` reads
`payload_of(event, PayloadClass)` (or `event.typed_payload`). In `domain_events.payload`
ids and fen are JSON numbers, datetimes and dates ISO 8601 strings, decimals strings,
enums their values.
"""


def owned_payload_types() -> list[PayloadType]:
    """Every payload declared under ``backend/`` (each owner's ``events`` module is
    imported here), by kind."""
    root = Path(backend.__file__).parent
    for path in sorted(root.rglob("events.py")):
        importlib.import_module(".".join(("backend", *path.relative_to(root).with_suffix("").parts)))
    return [declared for declared in payload_types() if declared.cls.__module__.startswith("backend.")]


def render_catalog(declared: Iterable[PayloadType]) -> str:
    """The Markdown list of ``declared``: a table of kinds, then each kind's fields."""
    kinds = sorted(declared, key=lambda payload: payload.kind)
    lines = [_HEADER, "| kind | owner | payload |", "|---|---|---|"]
    lines += [f"| `{payload.kind}` | {payload.owner} | `{payload.cls.__name__}` |" for payload in kinds]
    for payload in kinds:
        source = payload.cls.__module__.replace(".", "/") + ".py"
        lines += ["", f"## `{payload.kind}`", "", f"Owner: {payload.owner} (`{source}`, `{payload.cls.__name__}`)."]
        if payload.doc:
            lines += ["", payload.doc]
        lines += ["", "| field | type |", "|---|---|"]
        for field in payload.fields:
            optional = "" if field.required else " (may be absent)"
            lines.append(f"| `{field.name}` | {_cell(field.description)}{optional} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> None:
    sys.stdout.write(render_catalog(owned_payload_types()))


if __name__ == "__main__":
    main()
