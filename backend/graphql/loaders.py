"""DataLoader base: one batch = one short session of its own.

Sibling fields resolve concurrently, so a loader never shares an AsyncSession with
anything else in the request; each batch opens (and returns) its own pool connection.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

KeyT = TypeVar("KeyT", bound=Hashable)
ValueT = TypeVar("ValueT")


class SessionLoader(DataLoader[KeyT, ValueT], Generic[KeyT, ValueT]):
    """Subclass and implement :meth:`fetch`; missing keys resolve to :attr:`missing`."""

    missing: Any = None

    def __init__(self, context: Any) -> None:
        super().__init__(load_fn=self._load_batch)
        self.context = context

    async def _load_batch(self, keys: Sequence[KeyT]) -> list[ValueT]:
        async with self.context.read() as session:
            found = await self.fetch(session, keys)
        default = self.missing
        # A fresh list per missing key, so callers never share (and mutate) one default.
        return [found.get(key, [] if isinstance(default, list) else default) for key in keys]  # type: ignore[misc]

    async def fetch(self, session: AsyncSession, keys: Sequence[KeyT]) -> Mapping[KeyT, ValueT]:
        raise NotImplementedError
