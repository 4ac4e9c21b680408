"""What scheduled jobs and event handlers receive instead of importing globals.

The job worker builds one :class:`Runtime` per process from the settings, the database
URL and the domains' declarations (``backend.domains``), and passes it to every job and
handler. Tests build one with a fixed clock and a session factory of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.clock import Clock, utcnow

if TYPE_CHECKING:
    from backend.auth.principal import Principal
    from backend.settings import Settings


@dataclass(frozen=True, slots=True)
class Runtime:
    """Settings, time, sessions, the system actor and the services of the declarations.

    ``services`` maps a service name (``"household_hooks"``) to what a domain's
    declaration offers under it, and ``settings.<domain>`` to a domain's loaded settings
    group (``backend.domain.collect_services``).
    """

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    actor: Principal
    clock: Clock = utcnow
    services: Mapping[str, Any] = field(default_factory=dict)

    @property
    def timezone(self) -> str:
        """The utility's time zone name (``Asia/Shanghai``): it decides days and months."""
        return self.settings.timezone

    @property
    def tz(self) -> ZoneInfo:
        return self.settings.tz

    def now(self) -> datetime:
        return self.clock()

    def settings_group(self, domain: str) -> Any:
        """The settings group domain ``domain`` declares (``Domain.settings``)."""
        from backend.domain import settings_group_key  # domain.py names Runtime for typing only

        return self.service(settings_group_key(domain))

    async def defer(self, session: AsyncSession, *, job: str, dedupe_key: str, at: datetime | None = None,
                    payload: Mapping[str, Any] | None = None) -> bool:
        """Queue a run of the declared job ``job`` in ``session``'s transaction, as of
        :meth:`now` (``backend.jobs.defer_job``, offered as the service ``defer_job``: a
        domain imports no host)."""
        deferred: bool = await self.service("defer_job")(session, job=job, dedupe_key=dedupe_key, now=self.now(), at=at,
                                                         payload=payload)
        return deferred

    def service(self, name: str) -> Any:
        """The service a declaration offers under ``name``; KeyError names the missing one."""
        try:
            return self.services[name]
        except KeyError:
            raise KeyError(f"no domain offers the service {name!r}") from None
