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

from backend.archives.domain import DOMAIN as ARCHIVES
from backend.audit.domain import DOMAIN as AUDIT
from backend.auth.catalog import use_menus_of
from backend.auth.domain import DOMAIN as AUTH
from backend.domain import Domain
from backend.events.domain import DOMAIN as EVENTS
from backend.exports.domain import DOMAIN as EXPORTS
from backend.readings.domain import DOMAIN as READINGS

DOMAINS: tuple[Domain, ...] = (
    AUTH,
    ARCHIVES,
    AUDIT,
    EVENTS,
    EXPORTS,
    READINGS,
)

_installed: tuple[Domain, ...] = DOMAINS


def installed() -> tuple[Domain, ...]:
    """The domains this process runs with: :data:`DOMAINS`, plus any a test added."""
    return _installed


# The menu catalog (auth) reads the installed domains' menus from here.
use_menus_of(lambda: tuple(menu for domain in _installed for menu in domain.menus),
             lambda: (tuple(module for domain in _installed for module in domain.log_modules),
                      tuple(operation for domain in _installed for operation in domain.operations)))


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
