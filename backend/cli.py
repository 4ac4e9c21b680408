"""The ``shuiwu`` command (Typer): the host's commands (serve, jobs, demo, migrate,
export-schema, check, fake-gateway, backup, restore, privacy export|erase) and the installed domains' sub-commands
(``Domain.commands``, e.g. ``partitions ensure``), which receive a :class:`CliHost` as
``ctx.obj``. This module imports no domain by name."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from backend.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="shuiwu 水务: meters, billing and service for water utilities.", no_args_is_help=True)
demo_app = typer.Typer(help="Demo data and the all-in-one demo.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("shuiwu")


def _settings() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    from backend.observability import configure_logging

    configure_logging(settings.log_level, as_json=settings.log_json)
    return settings


def _gateway_settings() -> None:
    """Read every declared gateway's settings group (``SHUIWU_SMS_*`` …) before a host
    starts: a bad or missing one stops the process with one line naming it, as a bad
    ``SHUIWU_*`` setting does, instead of a traceback from inside the app's start."""
    from backend.domain import declared_gateways, read_settings
    from backend.domains import installed

    try:
        for gateway in declared_gateways(installed()).values():
            read_settings(gateway.settings)
    except SettingsError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


def _database(settings: Settings) -> str:
    from backend.db import resolve_database_url

    return resolve_database_url(settings.database_url, settings.data_dir)


def _migrate(url: str) -> None:
    from backend.db import migrate

    migrate(url)


class CliHost:
    """What a domain's sub-command gets as ``ctx.obj``: the settings, the migrated
    database, the declared handlers and the console, each made when first asked for."""

    console = console

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._url: str | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = _settings()
        return self._settings

    def migrated_database(self) -> str:
        if self._url is None:
            self._url = _database(self.settings())
            _migrate(self._url)
        return self._url

    @property
    def domains(self) -> tuple[Any, ...]:
        from backend.domains import installed

        return installed()

    @property
    def handlers(self) -> Any:
        from backend.jobs import declared_handlers

        return declared_handlers(self.domains)


def _print_version(asked: bool) -> None:
    if asked:
        from backend import version

        typer.echo(f"shuiwu {version()}")
        raise typer.Exit()


@app.callback()
def _host(
    ctx: typer.Context,
    _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                           help="Print the version and exit.")] = False,
) -> None:
    ctx.obj = CliHost()


def _flags_show_no_type() -> None:
    """Typer 0.29 prints a value type after every option, flags included
    ("--help <bool>"); a flag takes no value, so its type column stays empty."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()


def _mount_domain_commands() -> None:
    from backend.domain import load
    from backend.domains import installed

    for domain in installed():
        for name, reference in domain.commands.items():
            app.add_typer(load(reference), name=name)


@app.command()
def migrate() -> None:
    """Apply database migrations up to the newest."""
    settings = _settings()
    _migrate(_database(settings))
    console.print("[green]migrations applied[/green]")


@app.command("export-schema")
def export_schema() -> None:
    """Print the GraphQL schema (SDL) to stdout; schema.graphql is this output."""
    from backend.graphql.schema import export_sdl

    sys.stdout.write(export_sdl())


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default SHUIWU_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default SHUIWU_PORT).")] = None,
    no_migrate: Annotated[bool, typer.Option("--no-migrate", help="Do not apply migrations at start.")] = False,
) -> None:
    """Serve the API (GraphQL, GraphiQL, webhooks, /healthz, /metrics) with uvicorn."""
    import uvicorn

    from backend.app import create_app

    settings = _settings()
    _gateway_settings()
    url = _database(settings)
    if not no_migrate:
        _migrate(url)
    _warn_if_demo_credentials(url)
    # The app reads proxies (SHUIWU_TRUSTED_PROXIES); a WebSocket message is bounded like a GraphQL body.
    _serving()
    uvicorn.run(create_app(settings, url), host=host or settings.host, port=port or settings.port,
                log_config=None, access_log=False, proxy_headers=False, ws_max_size=settings.graphql_max_body_bytes)


def _warn_if_demo_credentials(url: str) -> None:
    """`serve` is the production command: say loudly when README's demo logins open the
    database it serves (`demo run`, the demo's own server, does not ask)."""
    from backend.db import create_engine, session_factory
    from backend.demo import published_credentials_in_use

    async def ask() -> list[str]:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            async with session_factory(engine)() as session:
                return await published_credentials_in_use(session)
        finally:
            await engine.dispose()

    try:
        found = asyncio.run(ask())
    except Exception as error:  # the server starts as before; its requests will say what is wrong
        logging.getLogger("shuiwu.serve").warning("could not check for the demo's published logins: %s",
                                                  startup_error_line(error) or type(error).__name__)
        return
    if found:
        message = (f"演示数据的公开账号可以登录此数据库 / the demo's published credentials open this database: "
                   f"{', '.join(found)}. Anyone who has read README can sign in: for a utility's data, start from "
                   f"`shuiwu migrate` + `shuiwu admin create` on a new data directory, or deactivate these users.")
        logging.getLogger("shuiwu.serve").warning(message)  # the log a service manager keeps
        if sys.stderr.isatty():
            console.print(f"[bold red]WARNING[/bold red] {message}", highlight=False)


@app.command()
def jobs() -> None:
    """Run the background job worker (events relay, scheduled jobs)."""
    from backend.jobs import run_worker

    settings = _settings()
    _gateway_settings()
    url = _database(settings)
    _migrate(url)
    _serving()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_worker(settings, url))


@demo_app.command("load")
def demo_load(
    households: Annotated[int, typer.Option(help="How many households.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same utility.")] = 7,
    readings: Annotated[bool, typer.Option(help="Also 13 months of meter readings up to now, and their alarms.")] = True,
    as_of: Annotated[str | None, typer.Option(
        "--as-of", metavar="INSTANT",
        help="End the readings at this ISO 8601 instant with its offset (e.g. 2026-11-26T10:30:00+08:00) "
             "instead of now, so the same demo can be loaded any day (the documented examples use one).")] = None,
) -> None:
    """Load the demo utility (idempotent: loading twice changes nothing)."""
    from rich.progress import Progress

    from backend.clock import parse_instant, utcnow
    from backend.db import StatementLimits, create_engine, session_factory
    from backend.demo import load_demo
    from backend.errors import DomainError

    now = utcnow()
    if as_of is not None:
        try:
            now = parse_instant(as_of, field="as_of")
        except DomainError as error:
            raise typer.BadParameter(f"{error.message_en}: {as_of!r}", param_hint="--as-of") from None
        if now > utcnow():
            raise typer.BadParameter(f"{as_of!r} is in the future: readings cannot be later than now",
                                     param_hint="--as-of")
    settings = _settings()
    url = _database(settings)
    _migrate(url)

    async def run() -> None:
        engine = create_engine(url, pool_size=2, max_overflow=0, limits=StatementLimits.for_bulk(settings))
        try:
            with Progress(console=console) as progress:
                task = progress.add_task("示范数据", total=None)
                async with session_factory(engine)() as session, session.begin():
                    await load_demo(session, households=households, seed=seed, readings=readings, now=now, tz=settings.timezone,
                                    progress=lambda step: progress.update(task, description=f"示范数据: {step}"))
                progress.update(task, total=1, completed=1, description="示范数据: 完成")
        finally:
            await engine.dispose()

    asyncio.run(run())


def demo_api_settings(settings: Settings) -> Settings:
    """The demo is for exploring: GraphiQL and introspection on for everyone."""
    return settings.model_copy(update={"graphiql": True, "introspection": "all"})


def _demo_environment(settings: Settings, host: str, port: int) -> None:
    """Set what the domains' ``demo_environment`` hooks ask for (payments' test merchants
    under DATA_DIR/payments/ unless SHUIWU_PAYMENTS_CONFIG is set), before the API, the
    job worker and the local fakes read their settings: every part of the demo sees the same."""
    import os

    from backend.domain import load
    from backend.domains import installed

    reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    api_url = f"http://{reachable}:{port}"
    for domain in installed():
        if domain.demo_environment is not None:
            os.environ.update(load(domain.demo_environment)(settings, api_url))


@demo_app.command("run")
def demo_run(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Everything `make demo` starts: the API, the job worker, the local fakes of the
    gateways pointed at this machine, and the domains' demo processes (the meter
    simulator and the acquisition worker), until Ctrl-C."""
    import uvicorn
    from rich.cells import cell_len

    from backend.app import create_app
    from backend.demo import ADMIN, CASHIER, CLIENT_ID, CLIENT_SECRET, MANAGER, REPAIR, RESIDENT_PHONE
    from backend.domain import declared_gateways, load
    from backend.domains import installed
    from backend.gateways.http import local_fakes
    from backend.jobs import run_worker

    settings = demo_api_settings(_settings())
    bind_host, bind_port = host or settings.host, port or settings.port
    _demo_environment(settings, bind_host, bind_port)
    _gateway_settings()
    url = _database(settings)
    _migrate(url)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, url), host=bind_host, port=bind_port,
                                           log_config=None, access_log=False, proxy_headers=False,
                                           ws_max_size=settings.graphql_max_body_bytes))

    fakes = local_fakes(declared_gateways(installed()).values())

    def banner() -> None:
        console.print(f"\n[bold green]shuiwu 水务 demo[/bold green]  GraphiQL: http://{bind_host}:{bind_port}/graphql")
        def column(text: str) -> str:  # padded by display width: a Chinese character is two columns
            return text + " " * max(1, 21 - cell_len(text))

        for login in (ADMIN, MANAGER, CASHIER, REPAIR):
            console.print(f"  {column(login.who)}username [bold]{login.username}[/bold]  password [bold]{login.password}[/bold]")
        console.print(f"  {column('住户 (resident)')}phone [bold]{RESIDENT_PHONE}[/bold], code printed in this log after requestLoginCode")
        console.print(f"  {column('第三方 (API client)')}client_id [bold]{CLIENT_ID}[/bold]  secret [bold]{CLIENT_SECRET}[/bold]")
        for kind, fake in fakes:
            console.print(f"  fake gateway {kind}: http://{fake.config.host}:{fake.config.port}/_control/")
        console.print("  Ctrl-C stops everything.\n")

    async def banner_once_serving() -> None:
        # Last, once the server listens: the start-up lines come before it, not after.
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        banner()

    async def run() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, url, stop=stop))
        # The domains' own demo processes (remote: the meter simulator and the acquisition worker).
        companions = [asyncio.create_task(load(domain.demo_run)(settings, url, stop), name=f"demo {domain.name}")
                      for domain in installed() if domain.demo_run is not None]
        async def serve_fake(kind: str, fake: uvicorn.Server) -> None:
            try:
                await fake.serve()
            except SystemExit:  # uvicorn's answer to a port in use: the demo goes on without it
                console.print(f"[yellow]fake gateway {kind} could not listen on port {fake.config.port}[/yellow]")

        # Ctrl-C is the API server's: the fakes stop when it does.
        serving = [asyncio.create_task(serve_fake(kind, fake)) for kind, fake in fakes]
        announced = asyncio.create_task(banner_once_serving())
        try:
            await server.serve()
        finally:
            announced.cancel()
            stop.set()
            for _, fake in fakes:
                fake.should_exit = True
            await asyncio.wait_for(asyncio.gather(worker, *companions, *serving, return_exceptions=True), timeout=15)

    _serving()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@app.command()
def check() -> None:
    """Check the installation: migrations at head, then each domain's checks, one line
    each; exit 1 when any fails."""
    from backend.checks import run_checks

    settings = _settings()
    url = _database(settings)
    failed = asyncio.run(run_checks(settings, url, echo=typer.echo))
    if failed:
        raise typer.Exit(1)


@app.command("resident-app")
def resident_app(
    web: Annotated[bool, typer.Option("--web", help="Serve the app to browsers instead of opening a window.")] = False,
    host: Annotated[str, typer.Option(help="Address to serve on with --web.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on with --web.")] = 8550,
    api: Annotated[str | None, typer.Option(
        help="The API's base URL (default SHUIWU_RESIDENT_API_URL, else http://127.0.0.1:8000).")] = None,
) -> None:
    """The resident app (用户端APP): a desktop window, or with --web a browser server (offline)."""
    # Imported here: flet is only loaded by the command that runs it.
    from resident_app.main import launch

    launch(web=web, host=host, port=port, api_url=api)


@app.command("fake-gateway")
def fake_gateway(
    kind: Annotated[str, typer.Argument(help="The gateway to fake: a kind an installed domain declares.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(
        help="Port (default: the one in the gateway's SHUIWU_<KIND>_URL; 0 picks a free one).")] = None,
) -> None:
    """Serve a local fake of an outside service (signing and verifying as the real one),
    with its control API under /_control/ (docs/gateways.md). Prints its URL once it listens."""
    from urllib.parse import urlsplit

    from backend.domain import declared_gateways, load, read_settings
    from backend.domains import installed
    from backend.gateways.http import fake_server, serve_fake

    fakes = {name: gateway for name, gateway in declared_gateways(installed()).items() if gateway.fake is not None}
    gateway = fakes.get(kind)
    if gateway is None:
        known = ", ".join(sorted(fakes)) or "none"
        console.print(f"[red]no fake gateway {kind!r}; the installed domains declare: {known}[/red]")
        raise typer.Exit(2)
    try:
        gateway_settings = read_settings(gateway.settings)
    except SettingsError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    if port is None:
        port = (urlsplit(gateway_settings.url).port or 0) if gateway_settings.url else 0
    server = fake_server(load(gateway.fake)(gateway_settings), host=host, port=port)

    def ready(bound: int) -> None:
        typer.echo(f"fake gateway {kind}: http://{host}:{bound} (control: http://{host}:{bound}/_control/)")
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_fake(server, ready=ready))


@app.command()
def backup(
    output: Annotated[Path | None, typer.Option("--output", "-o",
        help="Dump file, or a directory for a timestamped one (default DATA_DIR/backups/).")] = None,
) -> None:
    """Dump the database (pg_dump custom format); safe while the services run."""
    from backend.ops.backup import BackupError
    from backend.ops.backup import backup as run_backup

    settings = _settings()
    try:
        target = run_backup(_database(settings), output or settings.data_dir / "backups")
    except BackupError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    typer.echo(str(target))  # stdout, one line: F=$(shuiwu backup)


@app.command()
def restore(
    dump: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
        help="A file written by `shuiwu backup`.")],
    clean: Annotated[bool, typer.Option("--clean",
        help="Drop the dump's objects first (restore over an existing database).")] = False,
) -> None:
    """Restore a dump in one transaction. Stop serve, jobs and acquire first."""
    from backend.ops.backup import BackupError
    from backend.ops.backup import restore as run_restore

    settings = _settings()
    try:
        run_restore(_database(settings), dump, clean=clean)
    except BackupError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    console.print("[green]restore finished[/green]")


privacy_app = typer.Typer(help="Residents' data rights (PIPL): a copy of what is held about a phone, and its erasure "
                               "(docs/privacy.md).", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")
PhoneOption = Annotated[str, typer.Option("--phone", help="The resident's phone number.", show_default=False)]


def _privacy(ctx: typer.Context, command: str, work: Any) -> Any:
    """Run ``work(session, **context)`` in one transaction on the migrated database;
    a refusal is one line on stderr and exit 1."""
    from backend.clock import utcnow
    from backend.db import create_engine, session_factory
    from backend.errors import DomainError
    from backend.privacy import operator_name

    host: CliHost = ctx.obj
    settings = host.settings()
    url = host.migrated_database()

    async def run() -> Any:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            async with session_factory(engine)() as session, session.begin():
                return await work(session, secret=settings.secret(), now=utcnow(), timezone=settings.timezone,
                                  domains=host.domains, operator=operator_name(command))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except DomainError as error:
        typer.echo(f"error: {error.message} / {error.message_en}", err=True)
        raise typer.Exit(1) from None


@privacy_app.command("export")
def privacy_export(
    ctx: typer.Context,
    phone: PhoneOption,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON here (default: stdout).",
                                                show_default=False)] = None,
) -> None:
    """Write everything held about the resident with this phone as one JSON document (UTF-8)."""
    import functools
    import json

    from backend.privacy import export_personal_data

    if output is None:
        document = _privacy(ctx, "shuiwu privacy export", functools.partial(export_personal_data, phone=phone))
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        return
    # Opened before the export runs (appending, so a refusal leaves an existing file as it
    # was): the log must not say an export happened when its file cannot be written.
    existed = output.exists()
    try:
        handle = output.open("a", encoding="utf-8")
    except OSError as error:
        typer.echo(f"error: cannot write {output}: {error.strerror or error}", err=True)
        raise typer.Exit(1) from None
    with handle:
        try:
            document = _privacy(ctx, "shuiwu privacy export", functools.partial(export_personal_data, phone=phone))
        except BaseException:
            if not existed:
                output.unlink(missing_ok=True)
            raise
        handle.truncate(0)
        handle.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    rows = sum(len(section["rows"]) for section in document["sections"].values())
    typer.echo(f"exported {rows} rows in {len(document['sections'])} sections to {output}", err=True)


@privacy_app.command("erase")
def privacy_erase(
    ctx: typer.Context,
    phone: PhoneOption,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Replace the resident's identity (names, phones, ID numbers, addresses) with a
    pseudonym, end their bindings and sessions; households, meters, readings and money stay."""
    import functools

    from backend.privacy import erase_personal_data, masked

    if not yes:
        if not sys.stdin.isatty():
            typer.echo("error: not a terminal: pass --yes to erase without confirmation", err=True)
            raise typer.Exit(1)
        if not typer.confirm(f"注销 {masked(phone.strip())} 的个人信息 (不可撤销) / Erase the personal data of "
                             f"{masked(phone.strip())}? This cannot be undone"):
            typer.echo("nothing erased", err=True)
            raise typer.Exit(1)
    erasure = _privacy(ctx, "shuiwu privacy erase", functools.partial(erase_personal_data, phone=phone))
    if erasure.already_erased:
        typer.echo(f"already erased: nothing is held about this phone any more ({erasure.pseudonym})")
        return
    changed = ", ".join(f"{what} {count}" for what, count in erasure.changed.items() if count)
    typer.echo(f"erased as {erasure.pseudonym}: {changed or 'nothing to change'}")


_mount_domain_commands()


def _database_target() -> str:
    """Which database the command was pointed at, password hidden, for an error line."""
    import os

    url = os.environ.get("SHUIWU_DATABASE_URL")
    if not url:
        return f"the embedded PostgreSQL under {os.environ.get('SHUIWU_DATA_DIR') or '.shuiwu'}/pgdata"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL SQLAlchemy cannot parse is shown as the setting's name
        return "SHUIWU_DATABASE_URL"


# Set once a long-running command (serve, jobs, demo run) has started: what stops it
# later (a connection reset hours in) is not a start-up error and keeps its traceback.
_started_serving = False


def _serving() -> None:
    global _started_serving
    _started_serving = True


def startup_error_line(error: BaseException) -> str | None:
    """One line for what stops a command before it does anything (the database host
    unknown or unreachable, the login refused, the database missing, a migration that
    cannot run, a data directory it may not use); ``None`` for anything else, which is a
    bug and keeps its traceback."""
    import socket

    import asyncpg
    from alembic.util.exc import CommandError

    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        detail = " ".join(str(cause).split()) or type(cause).__name__
        if isinstance(cause, socket.gaierror):
            return f"cannot find the database host ({_database_target()}): {detail}"
        if isinstance(cause, ConnectionRefusedError | TimeoutError | ConnectionResetError):
            return f"cannot connect to the database ({_database_target()}): {detail}"
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError):
            return f"the database refused the login ({_database_target()}): {detail}"
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return f"no such database ({_database_target()}): {detail}"
        if isinstance(cause, CommandError):
            return f"migrations cannot run ({_database_target()}): {detail}"
        if isinstance(cause, PermissionError):
            return f"not allowed: {detail}"
        if isinstance(cause, OSError) and cause.errno is not None:
            return f"{type(cause).__name__}: {detail}"
        cause = cause.__cause__ or cause.__context__
    return None


def main() -> None:
    """The ``shuiwu`` command. What stops it at start is one line on stderr and exit
    status 1 (``SHUIWU_LOG_LEVEL=DEBUG`` keeps the traceback); other errors are bugs and
    keep theirs, as does anything that stops serve, jobs or demo run once they run."""
    import os

    try:
        app()
    except Exception as error:
        line = None if _started_serving else startup_error_line(error)
        if line is None or os.environ.get("SHUIWU_LOG_LEVEL", "").strip().upper() == "DEBUG":
            raise
        console.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
