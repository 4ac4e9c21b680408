"""The one period convention of the API (docs/periods.md) and its deprecated aliases.

Instants (``DateTime``) bound a list or filter as ``[from, to)``: from inclusive, to
exclusive, so consecutive ranges tile time with no reading or event counted twice.
Days (``Date``) bound a range as ``[from, to]``: both days included, as a person reads
"2026-01-01 to 2026-01-31". These phrases end every such argument's description.
"""

from __future__ import annotations

from typing import TypeVar

from backend.errors import BadUserInput

FROM_INSTANT = "from this instant, inclusive"
TO_INSTANT = "before this instant (exclusive)"
FROM_DAY = "First day, inclusive (the utility's calendar)."
TO_DAY = "Last day, inclusive (the utility's calendar)."
# Comparisons count whole months: the day of the month is ignored.
FROM_MONTH = "First month (or quarter), inclusive: the one holding this day."
TO_MONTH = "Last month (or quarter), inclusive: the one holding this day."


def deprecated_alias_reason(name: str) -> str:
    """The ``deprecation_reason`` of an old argument name kept for one release."""
    return f"Use `{name}` (same meaning; docs/periods.md). This name is removed in the next release."


_T = TypeVar("_T")


def one_of_aliases(value: _T | None, alias: _T | None, *, name: str, alias_name: str, prefix: str = "") -> _T | None:
    """``value`` (the argument's current name) or ``alias`` (its deprecated name), at most
    one of them: both at once is BAD_USER_INPUT on the current name, so a client that
    half-migrated learns it instead of one silently winning."""
    if value is not None and alias is not None:
        raise BadUserInput(
            f"{name} 与已弃用的 {alias_name} 不能同时提供", f"Give {name} or the deprecated {alias_name}, not both",
            field=f"{prefix}{name}",
        )
    return value if value is not None else alias
