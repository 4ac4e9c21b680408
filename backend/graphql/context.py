"""The per-request context every resolver receives as ``info.context``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.db import raw_connection, raw_read
from backend.errors import NotAuthenticated
from backend.exports.links import download_url, sign_download_token
from backend.settings import Settings

if TYPE_CHECKING:
    from backend.graphql.subscriptions import Subscriber

LoaderT = TypeVar("LoaderT")


@dataclass(slots=True)
class Context:
    """Request facts plus a session factory.

    Sibling fields resolve concurrently, so nothing here holds one shared AsyncSession:
    each root resolver and each DataLoader batch opens its own short session from the
    pool (:meth:`read`), and a mutation opens one transaction (:meth:`write`).
    """

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    request_id: str
    principal: Principal | None = None
    ip: str | None = None
    user_agent: str | None = None
    # Process-wide collaborators built once by create_app ("auth_policy", "over_limit",
    # later "household_hooks", gateways…): shared by every request; the dict is never
    # written per request (a collaborator such as the over-limit memo keeps its own state).
    services: dict[str, Any] = field(default_factory=dict)
    # Compiled list plans of the executing document (backend/graphql/fastpath.py).
    plans: dict[Any, Any] | None = None
    # Sessions in autocommit for reads: no BEGIN/ROLLBACK round trips around a SELECT.
    read_sessions: async_sessionmaker[AsyncSession] | None = None
    # The autocommit read engine, for raw asyncpg reads on hot paths (db.raw_read).
    read_engine: AsyncEngine | None = None
    # A subscription's connection (backend.graphql.subscriptions); None on plain HTTP.
    subscriber: Subscriber | None = None
    _loaders: dict[type, Any] = field(default_factory=dict)
    # Fields declared Expensive run one at a time within a request (limits.Expensive).
    expensive_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def loader(self, loader_cls: type[LoaderT]) -> LoaderT:
        """The request's one instance of ``loader_cls`` (created on first use)."""
        loader = self._loaders.get(loader_cls)
        if loader is None:
            loader = loader_cls(self)  # type: ignore[call-arg]
            self._loaders[loader_cls] = loader
        return loader  # type: ignore[no-any-return]

    def forget_loaders(self) -> None:
        """Drop the DataLoaders' caches: a subscription reuses its context for every
        event, and each event must read what is committed now."""
        self._loaders.clear()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A short read-only session of its own (no shared state between resolvers).

        It runs in autocommit: each statement sees committed data as of its own start, so
        a resolver that needs one snapshot across statements uses :meth:`write`.
        """
        async with (self.read_sessions or self.sessions)() as session:
            yield session

    @asynccontextmanager
    async def raw_read(self) -> AsyncIterator[Any]:
        """A raw asyncpg connection of the read pool (see :func:`backend.db.raw_read`)."""
        if self.read_engine is not None:
            async with raw_read(self.read_engine) as connection:
                yield connection
            return
        async with self.sessions() as session:
            yield await raw_connection(session)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block ends normally, rolled back otherwise."""
        async with self.sessions() as session, session.begin():
            yield session

    @property
    def caller(self) -> Principal:
        if self.principal is None:
            raise NotAuthenticated()
        return self.principal

    def signed_link(self, path: str, params: Mapping[str, str]) -> str:
        """A relative URL of the download route ``path`` with ``params``, signed for the
        caller for a few minutes (:func:`backend.exports.links.sign_download_token`): what
        every ``…ExportUrl`` field returns, once it has checked the parameters."""
        token, _ = sign_download_token(secret=self.settings.secret(), purpose=path, principal=self.caller,
                                       params=params, now=utcnow())
        return download_url(path, params, token)
