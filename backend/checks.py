"""``shuiwu check``: one line per check: the settings, the installation's, then each installed
domain's (``Domain.checks``, then a ``gateway.<kind>`` line per declared gateway) in
domain order, then whether the demo's published credentials open the database. A check
reads; it never repairs."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import text

from backend.db import StatementLimits, alembic_config, create_engine, session_factory
from backend.domain import CheckResult, Domain, load
from backend.domains import installed
from backend.gateways.checks import gateway_checks
from backend.runtime import Runtime
from backend.settings import Settings

log = logging.getLogger(__name__)


def _migration_head(url: str) -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


async def migrations_at_head(runtime: Runtime, url: str) -> CheckResult:
    head = _migration_head(url)
    async with runtime.sessions() as session:
        exists = (await session.execute(text("SELECT to_regclass('alembic_version') IS NOT NULL"))).scalar_one()
        current = (await session.execute(text("SELECT version_num FROM alembic_version"))).scalar_one_or_none() if exists else None
    if current != head:
        return CheckResult(False, f"database at {current or 'nothing'}, code at {head} (run `shuiwu migrate`)")
    return CheckResult(True, f"at {head}")


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0]


def _line(name: str, result: CheckResult) -> str:
    return f"{'ok  ' if result.ok else 'FAIL'}  {name}  {result.detail}"


def settings_summary(settings: Settings, url: str, domains: tuple[Domain, ...]) -> CheckResult:
    """The settings loaded (a malformed ``SHUIWU_*`` one stopped the command before this
    line), every declared gateway's settings group reads (``SHUIWU_SMS_*`` …), and the
    signing key is usable; the detail says what the process would use."""
    from sqlalchemy.engine import make_url

    from backend.domain import declared_gateways, read_settings

    try:
        for gateway in declared_gateways(domains).values():
            read_settings(gateway.settings)
        settings.secret()
    except Exception as error:  # SettingsError, or a data directory the key cannot be written to
        return CheckResult(False, _first_line(error))
    key = "SHUIWU_SECRET_KEY" if settings.secret_key is not None else f"key in {settings.data_dir}/secret_key"
    database = make_url(url).render_as_string(hide_password=True)
    return CheckResult(True, f"database {database}; {key}; time zone {settings.timezone}; log {settings.log_level}")


async def published_credentials(runtime: Runtime) -> CheckResult:
    """None of the demo's published logins or API client secret opens this database."""
    from backend.demo import published_credentials_in_use

    async with runtime.sessions() as session:
        found = await published_credentials_in_use(session)
    if found:
        return CheckResult(False, f"the demo's published credentials open this database ({', '.join(found)}): "
                                  "fine for `make demo`, never for a utility's data")
    return CheckResult(True, "no demo credentials")


async def run_checks(
    settings: Settings, url: str, *, echo: Callable[[str], None], domains: tuple[Domain, ...] | None = None,
) -> int:
    """Run every check, echo one ``ok|FAIL|skip  name  detail`` line each; return how
    many failed. A check that raises is a failure with the error's first line as its
    detail; when the database is not migrated the domains' checks are skipped."""
    from backend.jobs import runtime_for  # the same runtime the jobs get

    domains = domains if domains is not None else installed()
    configured = settings_summary(settings, url, domains)
    echo(_line("settings", configured))
    if not configured.ok:
        # Nothing else can be built from settings that do not read.
        for name in ("database.migrations", *(c.name for d in domains for c in (*d.checks, *gateway_checks(d)))):
            echo(f"skip  {name}  the settings do not read")
        return 1
    engine = create_engine(url, pool_size=1, max_overflow=0, limits=StatementLimits.for_api(settings))
    failed = int(not configured.ok)
    try:
        try:
            runtime = runtime_for(settings, session_factory(engine), domains=domains)
            migrated = await migrations_at_head(runtime, url)
        except Exception as error:  # an unreachable database or a bad settings group: one line, no traceback
            log.debug("the installation check raised", exc_info=True)
            migrated = CheckResult(False, f"{type(error).__name__}: {_first_line(error)}")
            echo(_line("database.migrations", migrated))
            for domain in domains:
                for check in (*domain.checks, *gateway_checks(domain)):
                    echo(f"skip  {check.name}  the installation check failed")
            return 1
        failed += not migrated.ok
        echo(_line("database.migrations", migrated))
        for domain in domains:
            for check in (*domain.checks, *gateway_checks(domain)):
                if not migrated.ok:
                    # Every other check reads tables the missing migrations make.
                    echo(f"skip  {check.name}  the database is not at the code's migrations")
                    continue
                try:
                    result = await load(check.run)(runtime)
                except Exception as error:  # a broken check is reported as a failure, not a traceback
                    log.debug("check %s raised", check.name, exc_info=True)
                    result = CheckResult(False, f"{type(error).__name__}: {_first_line(error)}")
                failed += not result.ok
                echo(_line(check.name, result))
        if migrated.ok:
            result = await published_credentials(runtime)
            failed += not result.ok
            echo(_line("install.published_credentials", result))
    finally:
        await engine.dispose()
    return failed
