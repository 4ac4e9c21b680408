"""The notes domain's plain HTTP route."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend.domain import HttpHost


def routes(host: HttpHost) -> list[Route]:
    greet = host.services["notes_greeting"]

    async def ping(request: Request) -> Response:
        return JSONResponse({"greeting": greet()})

    return [Route("/notes/ping", ping, methods=["GET"])]
