"""A real local HTTP receiver for webhook deliveries (module-scoped), a job worker that
polls often, and a world: an area tree, an API client scoped to 城东 and meters."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.auth.models import ApiClient, ApiClientArea, PrincipalKind
from backend.auth.principal import Principal
from backend.db import session_factory
from tests.factories import AreaTree, make_area_tree, unique
from tests.fixtures.live import RunningWorker, running_worker
from tests.readings.factories import make_meter

# What the worker of these tests reads (the settings group is read when it starts).
WEBHOOK_ENV = {"SHUIWU_WEBHOOK_ALLOW_PRIVATE": "true", "SHUIWU_WEBHOOK_BACKOFF_BASE_S": "0.1",
               "SHUIWU_WEBHOOK_MAX_ATTEMPTS": "3", "SHUIWU_WEBHOOK_TIMEOUT_S": "3"}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, object]:
        document: dict[str, object] = json.loads(self.body)
        return document


@dataclass
class Receiver:
    """Answers ``/ok`` with 200, ``/fail-once/<n>`` with 500 the first time and 200 after,
    ``/always-500`` with 500; records every request."""

    port: int
    received: list[Received] = field(default_factory=list)
    failed_once: set[str] = field(default_factory=set)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver(port=0)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.received.append(Received(self.path, dict(self.headers.items()), body))
                status = 200
                if self.path == "/always-500":
                    status = 500
                elif self.path.startswith("/fail-once") and self.path not in state.failed_once:
                    state.failed_once.add(self.path)
                    status = 500
            answer = b'{"ok": true}' if status == 200 else b"boom"
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def webhook_env() -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in WEBHOOK_ENV}
    os.environ.update(WEBHOOK_ENV)
    yield
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def worker(database_url: str, webhook_env: None) -> Iterator[RunningWorker]:
    """The job worker, polling every 0.2 s (retries are deferred 0.1 s, 0.2 s later)."""
    with running_worker(database_url, dequeue_timeout=timedelta(seconds=0.2), relay_sweep_interval=1.0) as running:
        yield running


@dataclass
class World:
    tree: AreaTree
    client: ApiClient
    principal: Principal  # the client as the API sees it
    east_meter: int
    west_meter: int


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        client = ApiClient(client_id=unique("swc_"), name=unique("第三方"), secret_hash="x" * 64,
                           scopes=["readings:read", "alarms:read", "webhooks:read"])
        session.add(client)
        await session.flush()
        assert client.id is not None
        session.add(ApiClientArea(api_client_id=client.id, area_id=tree.east.id))
        east = await make_meter(session, area_id=tree.east_community.id)
        west = await make_meter(session, area_id=tree.west_community.id)
    principal = Principal(kind=PrincipalKind.client, id=client.id, name=client.name,
                          permissions=frozenset(client.scopes), scope_paths=(tree.east.path,))
    assert east.id is not None and west.id is not None
    return World(tree, client, principal, east.id, west.id)
