"""``shuiwu pay reconcile --date D --channel alipay|wechat [--json]`` (对账,
``backend.payments.online.reconcile``): fetch the day's statements of the channel's
merchants, compare them with our books, store the run, and print its mismatches as a
table (``--json``: one JSON object, ``reconcile.run_json``). Exit 0 when everything
matched, 1 when anything is missing or differs or a statement could not be fetched
(the error on stderr), 2 for bad options (Typer's).
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

pay_app = typer.Typer(help="Online payments (在线支付): reconciliation with the gateways' statements.",
                      no_args_is_help=True)


class ReconcileChannel(StrEnum):
    alipay = "alipay"
    wechat = "wechat"


def _table(done: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from backend.money import fen_to_yuan

    # The report is the output (stdout); piped, it keeps whole numbers rather than 80 columns.
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    run = done.run
    console.print(f"{run.channel.value} {run.day.isoformat()} ({run.merchants or '-'}): {run.outcome.value}; "
                  f"ours {run.our_count} lines, net {fen_to_yuan(run.our_fen)}; "
                  f"theirs {run.their_count} lines, net {fen_to_yuan(run.their_fen)}")
    if not done.mismatches:
        return
    table = Table("kind", "line", "merchant", "out_trade_no", "out_refund_no", "ours", "theirs", "detail")
    for m in done.mismatches:
        table.add_row(m.kind.value, m.line_kind.value, m.merchant, m.out_trade_no, m.out_refund_no or "",
                      fen_to_yuan(m.our_fen) if m.our_fen is not None else "",
                      fen_to_yuan(m.their_fen) if m.their_fen is not None else "", m.detail)
    console.print(table)


def _services(settings: Any, domains: Any, sessions: Any) -> dict[str, Any]:
    """The hosts' services (the merchants and the gateways' clients), as the worker has them."""
    from backend.domain import collect_services

    return collect_services(settings, domains, sessions=sessions)


@pay_app.command("reconcile")
def reconcile_command(
    ctx: typer.Context,
    day: Annotated[datetime, typer.Option("--date", formats=["%Y-%m-%d"], help="The business day (utility zone).")],
    channel: Annotated[ReconcileChannel, typer.Option("--channel", help="alipay or wechat.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False,
) -> None:
    """对账: compare a day of a channel with its merchants' statements; exit 1 on any mismatch."""
    from backend.auth.system import SYSTEM_NAME
    from backend.clock import utcnow
    from backend.db import create_engine, session_factory
    from backend.payments.models import PaymentChannel
    from backend.payments.online.reconcile import reconcile_day, run_json
    from backend.payments.online.reconcile_models import ReconciliationOutcome

    host = ctx.obj
    settings = host.settings()
    url = host.migrated_database()
    wanted: date = day.date()

    async def run() -> Any:
        engine = create_engine(url, pool_size=2, max_overflow=0)
        try:
            sessions = session_factory(engine)
            services = _services(settings, host.domains, sessions)
            return await reconcile_day(sessions, services, channel=PaymentChannel(channel.value), day=wanted,
                                       by=f"cli:{SYSTEM_NAME}", now=utcnow, tz=settings.timezone)
        finally:
            await engine.dispose()

    done = asyncio.run(run())
    if as_json:
        typer.echo(json.dumps(run_json(done), ensure_ascii=False))
    else:
        _table(done)
    if done.run.error:
        typer.echo(f"statement not fetched: {done.run.error}", err=True)
    if done.run.outcome is not ReconciliationOutcome.matched:
        raise typer.Exit(1)
