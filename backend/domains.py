"""The installed domains, in the order of DESIGN.md's contracts (docs/domains.md).

A new domain adds one line here, in dependency order: a domain uses the services of the
domains before it, never a later one. The shared layers (the operation log, events,
exports) import no business domain, so where they stand among them is free; they stand
where the API's root fields have always been ordered (auth, archives, audit, readings),
since the root schema merges Query fields in this order.

Hosts read :func:`installed`. Tests install a domain of their own with :func:`install`
(for the run) or :func:`extended` (for a block); everything cached per domain set (the catalog, the root schema) is
keyed by the set, so the real set's caches are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from backend.alarms.domain import DOMAIN as ALARMS
from backend.archives.domain import DOMAIN as ARCHIVES
from backend.audit.domain import DOMAIN as AUDIT
from backend.auth.catalog import use_menus_of
from backend.auth.domain import DOMAIN as AUTH
from backend.auth.menus import LogModule, Menu, Operation
from backend.billing.domain import DOMAIN as BILLING
from backend.calendar.domain import DOMAIN as CALENDAR
from backend.domain import Domain
from backend.events.domain import DOMAIN as EVENTS
from backend.exports.domain import DOMAIN as EXPORTS
from backend.files.domain import DOMAIN as FILES
from backend.gateways.domain import DOMAIN as GATEWAYS
from backend.notifications.domain import DOMAIN as NOTIFICATIONS
from backend.payments.domain import DOMAIN as PAYMENTS
from backend.readings.domain import DOMAIN as READINGS
from backend.remote.domain import DOMAIN as REMOTE
from backend.valves.domain import DOMAIN as VALVES
from backend.webhooks.domain import DOMAIN as WEBHOOKS
from backend.workorders.domain import DOMAIN as WORKORDERS

DOMAINS: tuple[Domain, ...] = (
    AUTH,
    ARCHIVES,
    AUDIT,
    EVENTS,
    WEBHOOKS,
    EXPORTS,
    FILES,
    GATEWAYS,
    CALENDAR,
    ALARMS,
    READINGS,
    BILLING,
    PAYMENTS,
    NOTIFICATIONS,
    WORKORDERS,  # after notifications: its handler of workorder.changed calls notify_many
    REMOTE,  # after payments and billing: its handler of account.closed reads the household's account
    VALVES,  # after remote: the valve policy queues remote commands
)

_installed: tuple[Domain, ...] = DOMAINS


def installed() -> tuple[Domain, ...]:
    """The domains this process runs with: :data:`DOMAINS`, plus any a test added."""
    return _installed


@cache
def _menus_of(domains: tuple[Domain, ...]) -> tuple[Menu, ...]:
    return tuple(menu for domain in domains for menu in domain.menus)


@cache
def _log_declarations_of(domains: tuple[Domain, ...]) -> tuple[tuple[LogModule, ...], tuple[Operation, ...]]:
    return (tuple(module for domain in domains for module in domain.log_modules),
            tuple(operation for domain in domains for operation in domain.operations))


# The menu catalog (auth) reads the installed domains' menus from here: the same objects
# while the installed set stays (domains hash by identity), so the catalog's memo is a
# pointer comparison on the audit log's per-row names.
use_menus_of(lambda: _menus_of(_installed), lambda: _log_declarations_of(_installed))


def install(*extra: Domain) -> tuple[Domain, ...]:
    """Install ``extra`` domains after those installed, for the rest of the process (the
    test suite installs its test domain so); return the previous set."""
    global _installed
    previous = _installed
    names = {domain.name for domain in previous}
    clashing = [domain.name for domain in extra if domain.name in names]
    if clashing:
        raise ValueError(f"domains already installed: {', '.join(clashing)}")
    _installed = (*previous, *extra)
    return previous


@contextmanager
def extended(*extra: Domain) -> Iterator[tuple[Domain, ...]]:
    """Run the block with ``extra`` domains installed after the others."""
    global _installed
    previous = install(*extra)
    try:
        yield _installed
    finally:
        _installed = previous
