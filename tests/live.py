"""A real uvicorn server for tests that are about HTTP itself (body limits read while
streaming, a client that disconnects mid-query, /healthz under load, /metrics).

The server runs in a thread with its own event loop, so a test's client and the server
are as independent as two processes, yet the test can still reach ``app.state``. Start
one per module (``live_server`` in a module-scoped fixture): a start costs ~0.2 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette

from backend.app import create_app
from tests.graphql.client import api_settings


@dataclass(frozen=True, slots=True)
class LiveServer:
    url: str
    host: str
    port: int
    app: Starlette


@contextmanager
def serving(app: Any, *, startup_timeout_s: float = 20.0) -> Iterator[tuple[str, int]]:
    """Serve ``app`` with uvicorn on a free loopback port until the block ends."""
    # The stdlib loop, not uvloop: the server's loop runs in a thread, and uvloop handles
    # that the test thread's garbage collector frees (a cancelled statement's connection)
    # crashed the process (2 runs in 6); served for real, one thread owns everything.
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", access_log=False,
                            loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.01)
    port: int = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextmanager
def live_server(database_url: str, **setting_overrides: Any) -> Iterator[LiveServer]:
    """The real shuiwu app on ``database_url``, served over a real socket."""
    app = create_app(api_settings(**setting_overrides), database_url)
    with serving(app) as (host, port):
        yield LiveServer(f"http://{host}:{port}", host, port, app)
