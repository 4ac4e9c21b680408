"""Where a benchmark's time goes: :func:`timed` wraps a coroutine function so each call
adds its wall time to ``spent[name]``; a benchmark instruments the calls it cares about,
runs, prints the shares and clears ``spent`` between runs."""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

spent: dict[str, float] = defaultdict(float)


def timed(name: str, function: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - started

    return wrapper
