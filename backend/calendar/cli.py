"""The calendar's ``shuiwu`` sub-commands (backend.calendar.domain): ``holidays load FILE``
and ``holidays seed``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from backend.calendar.service import LoadedHolidays

holidays_app = typer.Typer(help="The holiday calendar (节假日与调休): official holidays and make-up working days.",
                           no_args_is_help=True)


def _in_transaction(host: Any, work: Any) -> LoadedHolidays:
    from backend.db import StatementLimits, create_engine, session_factory

    settings, url = host.settings(), host.migrated_database()

    async def run() -> LoadedHolidays:
        engine = create_engine(url, pool_size=1, max_overflow=0, limits=StatementLimits.for_api(settings))
        try:
            async with session_factory(engine)() as session, session.begin():
                result: LoadedHolidays = await work(session)
                return result
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _loaded_line(loaded: LoadedHolidays) -> str:
    years = ", ".join(str(year) for year in loaded.years)
    return f"已载入 {years} 年共 {loaded.days} 天 / loaded {loaded.days} days of {years}"


@holidays_app.command("load")
def holidays_load(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
        help="CSV with the header date,kind,name (kind: holiday or workday), or a JSON list of such objects.")],
) -> None:
    """Load an official schedule, replacing the days of the years it covers (idempotent; a bad row writes nothing)."""
    from backend.calendar.holiday_file import read_holiday_file
    from backend.calendar.models import DaySource
    from backend.calendar.service import load_holidays
    from backend.errors import DomainError

    host = ctx.obj
    try:
        rows = read_holiday_file(file)
        loaded = _in_transaction(host, lambda session: load_holidays(session, rows=rows, source=DaySource.file))
    except DomainError as error:
        host.console.print(f"[red]{file}: {error.message} / {error.message_en}[/red]", markup=True, highlight=False)
        raise typer.Exit(2) from None
    host.console.print(f"[green]{_loaded_line(loaded)}[/green]", highlight=False)


@holidays_app.command("seed")
def holidays_seed(ctx: typer.Context) -> None:
    """Load the chinese-calendar package's years that have no days yet (a year already loaded is kept)."""
    from backend.calendar.service import seed_from_package

    async def seed(session: AsyncSession) -> LoadedHolidays:
        return await seed_from_package(session)

    loaded = _in_transaction(ctx.obj, seed)
    line = _loaded_line(loaded) if loaded.years else "每个年份都已有数据 / every year the package covers is loaded"
    ctx.obj.console.print(f"[green]{line}[/green]", highlight=False)
