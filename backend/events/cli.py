"""``shuiwu events``: replay past events to a late handler, and list the event kinds.

The host mounts :data:`events_app` and sets ``ctx.obj`` to an object whose ``handlers``
is the :class:`~backend.events.service.HandlerRegistry` of every declared handler.
"""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import datetime, time, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console

from backend.events.catalog import owned_payload_types, render_catalog
from backend.events.service import HandlerRegistry

events_app = typer.Typer(help="Domain events: replay to a late handler, list the kinds.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str) -> timedelta:
    """``30m``, ``24h``, ``7d``, ``2w``: a whole number and one unit (s, m, h, d, w)."""
    match = _DURATION.match(value)
    if match is None or int(match[1]) == 0:
        raise typer.BadParameter(f"a duration is a positive whole number and a unit (s, m, h, d, w), like 24h or 7d: {value!r}")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def _handlers(ctx: typer.Context) -> HandlerRegistry:
    handlers = getattr(ctx.obj, "handlers", None)
    if not isinstance(handlers, HandlerRegistry):
        raise RuntimeError("shuiwu events runs with ctx.obj.handlers set to the declared handlers")
    return handlers


@events_app.command("replay")
def replay(
    ctx: typer.Context,
    handler: Annotated[str, typer.Option("--handler", help="The handler's name (or <kind>:<name>).")],
    since: Annotated[datetime | None, typer.Option(
        "--since", formats=["%Y-%m-%d"], help="Events created on or after this day (the utility's time zone).")] = None,
    from_id: Annotated[int | None, typer.Option("--from-id", min=1, help="Events with this id or a later one.")] = None,
    horizon: Annotated[str | None, typer.Option(
        "--horizon", help="Skip events older than this (24h, 7d); default: the handler's declared horizon.")] = None,
) -> None:
    """Queue the handler's jobs for the past events of its kind it has not handled yet.

    Idempotent: a second replay queues nothing. The job worker (`shuiwu jobs`) runs them.
    """
    from backend.clock import utcnow
    from backend.db import resolve_database_url
    from backend.events.listener import connect
    from backend.events.replay import replay_events
    from backend.settings import SettingsError, load_settings

    if (since is None) == (from_id is None):
        raise typer.BadParameter("give exactly one of --since DATE and --from-id N")
    horizon_override = parse_duration(horizon) if horizon is not None else None
    try:
        declared = _handlers(ctx).named(handler)
    except KeyError as error:
        raise typer.BadParameter(str(error.args[0]), param_hint="--handler") from None
    try:
        settings = load_settings()
    except SettingsError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    start = datetime.combine(since.date(), time(), tzinfo=settings.tz) if since is not None else None
    url = resolve_database_url(settings.database_url, settings.data_dir)

    async def run() -> Any:
        connection = await connect(url, application_name="shuiwu-replay")
        try:
            return await replay_events(
                connection, handler=declared, now=utcnow(), since=start, from_id=from_id, horizon=horizon_override
            )
        finally:
            await connection.close()

    result = asyncio.run(run())
    console.print(
        f"{result.entrypoint}: {result.enqueued} queued, {result.already_handled} already handled, "
        f"{result.already_queued} already queued, {result.beyond_horizon} beyond the horizon"
    )


@events_app.command("list")
def list_kinds() -> None:
    """Print every event kind with its owner and payload fields (docs/events.md)."""
    sys.stdout.write(render_catalog(owned_payload_types()))
