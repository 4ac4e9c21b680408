"""Between two slices, admitted work (expensive requests, exports, imports) gives the loop to
the requests that are not, while any is in flight; everything else takes one loop turn."""

from __future__ import annotations

import asyncio
import time

from backend.graphql.limits import Admission
from backend.slicing import FOREGROUND_PAUSE_S, LOOP_SHARE, map_in_slices, pause

# asyncio may run a timer up to its clock resolution early.
EARLY = 0.0002


async def pause_beats_a_timer_of_one_pause() -> bool:
    """Whether :func:`pause` returns before a timer as long as the foreground pause fires."""
    timer = asyncio.ensure_future(asyncio.sleep(FOREGROUND_PAUSE_S))
    paused = asyncio.ensure_future(pause())
    done, _ = await asyncio.wait({timer, paused}, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(timer, paused)
    return paused in done and timer not in done


async def test_admitted_work_waits_between_slices_while_a_foreground_request_is_in_flight() -> None:
    admission = Admission(per_process=1, per_principal=1, wait_s=1)
    # Two requests counted at the door: the cashier's search, say, and the admitted one.
    with LOOP_SHARE.request(), LOOP_SHARE.request():
        async with admission.admit("staff:1"):
            started = time.perf_counter()
            await pause()
            assert time.perf_counter() - started >= FOREGROUND_PAUSE_S - EARLY
            # The tasks it starts (an export's chunk reads) are admitted work too.
            assert not await asyncio.ensure_future(pause_beats_a_timer_of_one_pause())


async def test_admitted_work_alone_on_the_loop_takes_one_turn() -> None:
    admission = Admission(per_process=1, per_principal=1, wait_s=1)
    async with admission.admit("staff:1"):
        with LOOP_SHARE.request():  # the admitted request itself, counted at the door
            assert LOOP_SHARE.foreground == 0
            assert await pause_beats_a_timer_of_one_pause()


async def test_foreground_work_never_waits_for_the_timer() -> None:
    with LOOP_SHARE.request(), LOOP_SHARE.request():
        assert LOOP_SHARE.foreground == 2
        assert await pause_beats_a_timer_of_one_pause()
    assert (LOOP_SHARE.requests, LOOP_SHARE.admitted) == (0, 0)


async def test_a_foreground_request_gets_its_loop_turns_while_admitted_work_runs_in_slices() -> None:
    """Twenty loop turns of a small request (read, pool, query, answer …) while an admitted
    request builds rows in 1 ms slices: it waits for at most a few of those slices, not one
    per turn."""
    admission = Admission(per_process=1, per_principal=1, wait_s=1)
    slices_during: list[int] = []
    built = 0

    def busy(item: int) -> int:
        nonlocal built
        ends = time.perf_counter() + 0.0001
        while time.perf_counter() < ends:
            pass
        built += 1
        return item

    async def heavy() -> None:
        with LOOP_SHARE.request():
            async with admission.admit("staff:1"):
                await map_in_slices(busy, range(600))  # ~60 ms of CPU

    async def small() -> None:
        await asyncio.sleep(0.01)  # the heavy work is under way
        with LOOP_SHARE.request():
            before = built
            for _ in range(20):
                await asyncio.sleep(0)
            slices_during.append((built - before) // 10)  # a slice builds ~10 rows

    await asyncio.gather(heavy(), small())
    assert built == 600
    assert slices_during[0] <= 5


async def test_a_request_waiting_for_admission_is_not_foreground() -> None:
    """A households page queued behind a year of statistics does no loop work: the running
    one keeps its turns."""
    admission = Admission(per_process=1, per_principal=1, wait_s=1)

    async def queued() -> None:
        async with admission.admit("staff:2"):
            pass

    with LOOP_SHARE.request(), LOOP_SHARE.request():
        async with admission.admit("staff:1"):
            waiting = asyncio.ensure_future(queued())
            await asyncio.sleep(0.01)
            assert (admission.waiting, LOOP_SHARE.foreground) == (1, 0)
            assert await pause_beats_a_timer_of_one_pause()
        await waiting
