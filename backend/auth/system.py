"""The system actor (系统): who automatic work acts as.

Scheduled jobs and event handlers (alarm closing, valve policy, gateway notifications,
imports run by jobs) act as this principal, never "without a principal". It holds
exactly the permissions the installed domains' jobs and handlers declare they need
(``Job.permissions``, ``Handler.permissions``; docs/domains.md lists them), never every
permission, and sees the whole area tree (automatic work spans the company). It signs in
nowhere: no token, password or session carries it, and the operation log shows it as 系统.
"""

from __future__ import annotations

from collections.abc import Iterable

from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal

SYSTEM_NAME = "系统"
# The id stored in the operation log's actor_id; no table row has it.
SYSTEM_ID = 0


def system_actor(permissions: Iterable[str]) -> Principal:
    """The system principal holding ``permissions`` (the union the declarations name)."""
    return Principal(kind=PrincipalKind.system, id=SYSTEM_ID, name=SYSTEM_NAME, permissions=frozenset(permissions),
                     scope_paths=("/",))
