"""``shuiwu tariff load FILE``, ``shuiwu tariff quote CODE …`` and ``shuiwu bill run``
(backend.billing.domain).

``load`` saves one tariff version from a TOML file (docs/billing.md): new → "saved",
the same content for an existing (code, valid_from) → "unchanged" (exit 0), different
content for it → one line naming the refusal (exit 1). ``quote`` prints a quote; with
``--json`` exactly the object of ``Quote.as_json``.

``bill run --period YYYY-MM [--area ID-or-code]`` runs the billing run
(:func:`backend.billing.bills.run_billing`) as the system actor (系统) over the whole area
tree or the area's subtree, committing per chunk behind a progress bar, and prints one
summary line; a refusal is one line and exit 1.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer

tariff_app = typer.Typer(help="Tariffs (水价): load a version from TOML, quote a volume.", no_args_is_help=True)
bill_app = typer.Typer(help="Postpaid bills (账单): the billing run.", no_args_is_help=True)

MAX_FILE_BYTES = 64 * 1024  # a tariff file is a few hundred bytes


def _session_run(ctx: typer.Context, work: Any) -> Any:
    from backend.db import create_engine, session_factory

    url = ctx.obj.migrated_database()

    async def run() -> Any:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            async with session_factory(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _refuse(error: Any) -> None:
    field = f" ({error.field})" if error.field else ""
    typer.echo(f"{error.code}{field}: {error.message} / {error.message_en}", err=True)
    raise typer.Exit(1)


@tariff_app.command("load")
def load(ctx: typer.Context, file: Annotated[Path, typer.Argument(help="A tariff file (TOML).")]) -> None:
    """Save the tariff version FILE describes; identical content again is "unchanged"."""
    from backend.billing.service import save_tariff
    from backend.errors import DomainError

    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            typer.echo(f"{file}: larger than {MAX_FILE_BYTES} bytes", err=True)
            raise typer.Exit(1)
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        typer.echo(f"{file}: {error}", err=True)
        raise typer.Exit(1) from None
    try:
        saved = _session_run(ctx, lambda session: save_tariff(session, raw=raw))
    except DomainError as error:
        _refuse(error)
    tariff = saved.tariff
    state = "unchanged" if saved.unchanged else "saved"
    typer.echo(f"{tariff.code} {tariff.valid_from.isoformat()}: {state}")


def _volume(value: str, name: str) -> Decimal:
    try:
        return Decimal(value)
    except InvalidOperation:
        raise typer.BadParameter("a decimal number of m³", param_hint=name) from None


def _day(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


@tariff_app.command("quote")
def quote(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(help="The tariff's code, e.g. SH-RES.")],
    volume: Annotated[str, typer.Option("--volume", help="m³ to price (up to 4 places).")],
    prior_volume: Annotated[str, typer.Option("--prior-volume", help="m³ already used in this tier cycle.")] = "0",
    persons: Annotated[int | None, typer.Option("--persons", min=1, max=100,
                                                help="Household size (applies the household-size rule).")] = None,
    on: Annotated[datetime | None, typer.Option("--on", formats=["%Y-%m-%d"], help="Price on this day.")] = None,
    start: Annotated[datetime | None, typer.Option("--from", formats=["%Y-%m-%d"], help="First day of a period.")] = None,
    end: Annotated[datetime | None, typer.Option("--to", formats=["%Y-%m-%d"], help="Last day (inclusive).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the quote as JSON.")] = False,
) -> None:
    """Price a volume under a tariff on a day, or over a period prorated by days."""
    from backend.billing import service
    from backend.errors import DomainError
    from backend.money import fen_to_yuan

    if (on is None) == (start is None and end is None) or (start is None) != (end is None):
        raise typer.BadParameter("give --on DATE, or --from DATE and --to DATE")
    try:
        result = _session_run(ctx, lambda session: service.quote(
            session, code=code, volume=_volume(volume, "--volume"), prior_volume=_volume(prior_volume, "--prior-volume"),
            persons=persons, on=_day(on), start=_day(start), end=_day(end)))
    except DomainError as error:
        _refuse(error)
    if as_json:
        typer.echo(json.dumps(result.as_json(), ensure_ascii=False))
        return
    for line in result.as_json()["lines"]:
        typer.echo(f"{line['component']:<12} tier {line['tier']}  {line['volume']:>14} m³ × {line['price']:>8}"
                   f" = {line['amount']:>12}")
    typer.echo(f"{'total':<12} {fen_to_yuan(result.total_fen):>48}")


# An area by its code, else by its id (a code wins when a code looks like another area's id).
_AREA_BY_ID_OR_CODE = ("SELECT id FROM areas WHERE code = $1 OR ($2::bigint IS NOT NULL AND id = $2) "
                       "ORDER BY coalesce(code = $1, false) DESC LIMIT 1")


@bill_app.command("run")
def bill_run(
    ctx: typer.Context,
    period: Annotated[str, typer.Option("--period", help="The period to bill, YYYY-MM (its first month).")],
    area: Annotated[str | None, typer.Option("--area", help="Bill this area's subtree: its id or its code.")] = None,
) -> None:
    """出账: bill the period for the open postpaid accounts (of an area's subtree); a re-run bills nothing twice."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from backend.auth.system import SYSTEM_NAME
    from backend.billing import bills, review
    from backend.clock import utcnow
    from backend.db import StatementLimits, create_engine, raw_connection, session_factory
    from backend.errors import DomainError, NotFound
    from backend.money import fen_to_yuan

    host = ctx.obj
    settings = host.settings()
    url = host.migrated_database()

    async def run() -> bills.BillingRunResult:
        # Two connections: the run reads the next chunk's usage on the second (bills.py).
        engine = create_engine(url, pool_size=2, max_overflow=0, limits=StatementLimits.for_bulk(settings))
        try:
            async with session_factory(engine)() as session:
                first = review.parse_period(period)
                area_id = None
                if area is not None:
                    driver = await raw_connection(session)
                    area_id = await driver.fetchval(_AREA_BY_ID_OR_CODE, area,
                                                    int(area) if area.isdigit() and len(area) < 19 else None)
                    if area_id is None:
                        raise NotFound(field="area")
                with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                              console=host.console, transient=True) as progress:
                    task = progress.add_task(f"出账 {period}", total=None)

                    def advance(done: int, total: int) -> None:
                        progress.update(task, completed=done, total=total)

                    result = await bills.run_billing(session, period=first, area_id=area_id, now=utcnow(),
                                                     by=SYSTEM_NAME, tz=settings.timezone, progress=advance,
                                                     commit=session.commit)
                    await session.commit()
                return result
        finally:
            await engine.dispose()

    try:
        result = asyncio.run(run())
    except DomainError as error:
        _refuse(error)
    typer.echo(f"{period}: issued {result.issued}, held {len(result.held)}, already billed {result.already_billed}, "
               f"skipped {result.skipped}, amount ¥{fen_to_yuan(result.amount_fen)} (run {result.run_id})")
