"""Readings' ``shuiwu`` sub-commands (backend.readings.domain): ``partitions ensure``."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

partitions_app = typer.Typer(help="Monthly partitions of the readings table.", no_args_is_help=True)


@partitions_app.command("ensure")
def partitions_ensure(
    ctx: typer.Context,
    months_ahead: Annotated[int, typer.Option("--months-ahead", min=0, max=120,
        help="Also create this many months after the current one.")] = 3,
) -> None:
    """Create the readings partitions of this month and the next N (utility's time zone)."""
    from backend.clock import utcnow
    from backend.db import StatementLimits, create_engine, session_factory
    from backend.readings.partitions import ensure_partitions_ahead

    host = ctx.obj
    settings, url = host.settings(), host.migrated_database()

    async def run() -> list[str]:
        engine = create_engine(url, pool_size=1, max_overflow=0, limits=StatementLimits.for_bulk(settings))
        try:
            async with session_factory(engine)() as session, session.begin():
                return await ensure_partitions_ahead(session, now=utcnow(), tz=settings.tz, months_ahead=months_ahead)
        finally:
            await engine.dispose()

    created = asyncio.run(run())
    host.console.print(f"[green]partitions attached: {', '.join(created) or 'none needed'}[/green]")
