"""CPU work on the event loop in slices: one process serves every request, so a long
loop over rows (building 1,000 nodes, completing a 1,000-row list, reading an export's
rows from a cursor) hands the loop back every :data:`SLICE_S` seconds instead of stalling
``/healthz`` and every other request until it is done.

Between two slices, work that runs *admitted* (an expensive GraphQL request, an export or
an import: :class:`backend.graphql.limits.Admission`) gives way to the requests that are
not, while any of them is in flight (:func:`pause`). A small request needs several loop
turns (read, pool, query, answer); without that, each turn also waited for one slice of
every heavy request, and under four heavy clients that was most of the cashier's search.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

# A slice is ~1 ms of CPU: a small request needs several loop turns (read, pool, query,
# answer) and waits up to a slice at each. Measured with a client looping 1,000-row
# households pages: /healthz p95 39 ms with 4 ms slices, 21 ms with 1 ms, no better with
# 0.5 ms; the pages' throughput the same (the yields cost ~20 µs each).
SLICE_S = 0.001
# How long admitted work leaves the loop to small requests after each of its slices while
# one is in flight: admitted work then has at most half of the loop, and never stops.
FOREGROUND_PAUSE_S = 0.001

T = TypeVar("T")


class LoopShare:
    """Requests in flight on this process's loop, and how many of them are expensive
    (admitted, or waiting for admission); the rest are the foreground. One event loop per
    process, so plain counters suffice."""

    __slots__ = ("admitted", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.admitted = 0

    @property
    def foreground(self) -> int:
        return max(0, self.requests - self.admitted)

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Around one HTTP request (``backend.app``, inside the anonymous gate: a refusal
        held back by its delay is not work in flight)."""
        self.requests += 1
        try:
            yield
        finally:
            self.requests -= 1

    @contextlib.contextmanager
    def admitted_work(self) -> Iterator[None]:
        """Around an expensive request from its wait for admission on: its slices, and those
        of the tasks it starts, :func:`pause`."""
        self.admitted += 1
        token = _admitted.set(True)
        try:
            yield
        finally:
            _admitted.reset(token)
            self.admitted -= 1


LOOP_SHARE = LoopShare()
_admitted: ContextVar[bool] = ContextVar("shuiwu_admitted", default=False)


def admitted() -> bool:
    """True inside admitted work (and the tasks it starts): its statements run on the
    admitted pools (:func:`backend.db.route_admitted`)."""
    return _admitted.get()


async def pause() -> None:
    """The yield between two slices: a turn of the loop, or for admitted work while
    foreground requests are in flight, :data:`FOREGROUND_PAUSE_S` (a timer: the loop serves
    the foreground's callbacks and, when they wait for the database, sleeps)."""
    if _admitted.get() and LOOP_SHARE.foreground:
        await asyncio.sleep(FOREGROUND_PAUSE_S)
    else:
        await asyncio.sleep(0)


class Slices:
    """``if slices.over(): await pause()`` between two units of work."""

    __slots__ = ("_ends",)

    def __init__(self) -> None:
        self._ends = time.perf_counter() + SLICE_S

    def over(self) -> bool:
        now = time.perf_counter()
        if now < self._ends:
            return False
        self._ends = now + SLICE_S
        return True


async def map_in_slices(function: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
    """``[function(item) for item in items]``, yielding to the event loop between slices."""
    slices = Slices()
    done: list[T] = []
    for item in items:
        if slices.over():
            await pause()
        done.append(function(item))
    return done


async def take(rows: AsyncIterator[T], count: int) -> list[T]:
    """The next ``count`` items of ``rows`` (fewer at its end), yielding to the event loop
    between slices: a cursor's rows are decoded and shaped here, on the loop."""
    slices = Slices()
    chunk: list[T] = []
    async for row in rows:
        chunk.append(row)
        if len(chunk) == count:
            break
        if slices.over():
            await pause()
    return chunk
