"""``shuiwu admin create``: the first administrator of an installation (and any later one).

Interactive in a terminal (it asks for what is missing, the password twice and hidden);
for automation every answer comes from flags or the environment, and the password from
``SHUIWU_ADMIN_PASSWORD`` or one line on stdin (``--password-stdin``), never from a flag
(a command line is visible to every user of the host in ``ps``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated

import typer

admin_app = typer.Typer(help="Staff administrators (the first one of a new installation).", no_args_is_help=True)

PASSWORD_ENV = "SHUIWU_ADMIN_PASSWORD"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line.strip():
            raise _fail("--password-stdin: stdin gave no password")
        return line.rstrip("\r\n")
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise _fail(f"no password: set {PASSWORD_ENV}, pass --password-stdin, or run in a terminal")
    return str(typer.prompt("密码 / Password", hide_input=True, confirmation_prompt=True))


@admin_app.command("create")
def admin_create(
    ctx: typer.Context,
    username: Annotated[str | None, typer.Option("--username", envvar="SHUIWU_ADMIN_USERNAME",
        help="Login name of the administrator.", show_default=False)] = None,
    full_name: Annotated[str, typer.Option("--full-name", envvar="SHUIWU_ADMIN_FULL_NAME",
        help="Name shown in the operation log.")] = "系统管理员",
    company: Annotated[str | None, typer.Option("--company", envvar="SHUIWU_ADMIN_COMPANY",
        help="The utility's name: created as the root area when there is none; "
             "else it names the company (optional when there is exactly one).", show_default=False)] = None,
    phone: Annotated[str | None, typer.Option("--phone", help="Contact phone.", show_default=False)] = None,
    email: Annotated[str | None, typer.Option("--email", help="Contact e-mail.", show_default=False)] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
        help=f"Read the password from the first line of stdin (else {PASSWORD_ENV}, else a prompt).")] = False,
) -> None:
    """Create a staff user holding 系统管理员 (every menu, the whole company)."""
    from backend.archives.service import create_administrator
    from backend.clock import utcnow
    from backend.db import create_engine, session_factory
    from backend.errors import DomainError

    host = ctx.obj
    interactive = sys.stdin.isatty() and not password_stdin
    if username is None:
        if not interactive:
            raise _fail("no username: pass --username or set SHUIWU_ADMIN_USERNAME")
        username = str(typer.prompt("用户名 / Username"))
    password = _password(password_stdin)
    url = host.migrated_database()

    async def run() -> str:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            async with session_factory(engine)() as session, session.begin():
                made = await create_administrator(session, username=username, full_name=full_name, password=password,
                                                  now=utcnow(), company=company, phone=phone, email=email)
                role = "new role" if made.role_created else "role"
                company_note = "new company" if made.company_created else "company"
                return (f"administrator {made.user.username} created ({role} {made.role.name}, "
                        f"{company_note} {made.company.name}); sign in with the login mutation")
        finally:
            await engine.dispose()

    try:
        typer.echo(asyncio.run(run()))
    except DomainError as error:
        field = f" ({error.field})" if error.field else ""
        raise _fail(f"{error.message} / {error.message_en}{field} [{error.code}]") from None
