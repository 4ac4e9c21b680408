"""The live-server fixture itself: a real socket, the real app."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.live import LiveServer, live_server


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveServer]:
    with live_server(database_url) as server:
        yield server


async def test_the_live_server_answers_health_over_a_real_socket(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        response = await http.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "up"}
