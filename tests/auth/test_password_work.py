"""argon2 runs off the event loop on a small executor of its own, so a burst of logins
cannot take every core from the loop (and so from every other request)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from backend.auth import security


async def test_a_burst_of_password_checks_runs_at_most_one_per_spare_core(monkeypatch: pytest.MonkeyPatch) -> None:
    running, most, threads = 0, 0, set()
    lock = threading.Lock()

    def slow_check(password_hash: str | None, password: str) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            threads.add(threading.current_thread().name)
        time.sleep(0.02)  # stands for argon2's CPU (which releases the GIL)
        with lock:
            running -= 1
        return False

    monkeypatch.setattr(security, "verify_password", slow_check)

    results = await asyncio.gather(*(security.verify_password_off_loop(None, f"guess-{n}") for n in range(8)))

    assert results == [False] * 8
    assert most == security.PASSWORD_THREADS
    assert all(name.startswith("argon2") for name in threads)
