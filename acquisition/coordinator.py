"""What the worker holds of each leased link: a coordinator (a bus, the MQTT broker)
running as a task of its own. The worker starts it when it takes the lease and stops it
when it stops or loses the lease; what a coordinator finishes before it ends (the command
in hand, a delivery) is its own."""

from __future__ import annotations

import asyncio
import contextlib


class Coordinator:
    """A leased link's task: :meth:`start` runs :meth:`_run`, :meth:`stop` asks it to
    finish what it has in hand and waits for it, :meth:`wait` waits for its end."""

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def task_name(self) -> str:
        raise NotImplementedError

    async def _run(self, *, drain: bool) -> None:
        """Serve the link until asked to stop; with ``drain``, until nothing is queued."""
        raise NotImplementedError

    def start(self, *, drain: bool = False) -> None:
        self._task = asyncio.create_task(self._run(drain=drain), name=self.task_name)

    async def stop(self) -> None:
        self._stopping.set()
        await self.wait()

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
