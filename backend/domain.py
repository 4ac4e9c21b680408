"""A domain's one declaration of everything it adds to the host (docs/domains.md).

Each domain package has ``domain.py`` with ``DOMAIN = Domain(...)``; ``backend.domains``
lists them in DESIGN.md's order, and the hosts (the app, the job worker, the CLI, the
root schema, the menu catalog, ``all_models``, the demo and ``shuiwu check``) read that
list and import no domain by name. Home Assistant's integration manifest and Django's
AppConfig are the models.

Heavy parts (the GraphQL schema, HTTP routes, Typer sub-apps, demo steps) are named by
``"module"`` or ``"module:attribute"`` strings and imported only by the host that needs
them, so ``shuiwu backup`` does not import strawberry and a declaration never imports
its own schema. Light parts (menus, jobs, handlers, checks, event payloads) are values.

What a domain's **schema module** exposes (all optional):

- ``Query``, ``Mutation``, ``Subscription``: strawberry types merged into the root ones;
- ``TYPES``: extra types the root schema must know (implementations of an interface);
- ``NODES``: ``{"TypeName": fetcher}`` for ``node(id:)``;
- ``EXTENSIONS``: :class:`backend.graphql.extend.TypeExtension` values adding fields to
  an earlier domain's types (billing's ``Household.account``), so the earlier domain
  never imports the later one.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from backend.auth.menus import LogModule, Menu, Operation
from backend.events.service import Handler

# A "module:attribute" string, or the object itself (tests declare functions directly).
JobFunction = Callable[["Runtime", Mapping[str, Any]], Awaitable[object]]
CheckFunction = Callable[["Runtime"], Awaitable["CheckResult"]]

if TYPE_CHECKING:
    from pydantic import BaseModel
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from backend.auth.principal import Principal
    from backend.runtime import Runtime
    from backend.settings import Settings


@dataclass(frozen=True, slots=True)
class Job:
    """A job the worker runs: on a cron schedule, when deferred (``backend.jobs.defer_job``),
    or both.

    ``name`` is the stable PgQueuer entrypoint: queued work refers to it, so renaming the
    function never orphans it. ``run(runtime, payload)`` owns its transactions (a purge
    of years of rows commits in batches); ``payload`` is ``{}`` on a scheduled run and
    what the deferring caller wrote otherwise. ``permissions`` are what the system actor
    needs to run it (docs/domains.md lists them).
    """

    name: str
    # "module:function", imported when the worker starts (declarations stay import-light).
    run: str | JobFunction
    cron: str | None = None
    permissions: frozenset[str] = frozenset()
    description: str = ""


@dataclass(frozen=True, slots=True)
class MessageRule:
    """An event that becomes resident or staff messages (docs/notifications.md).

    A domain declares the rule in its own ``Domain.messages``; the notifications domain's
    handler of ``event`` (declared for every rule of the installed domains) calls
    ``recipients(session, event, now)`` — a ``"module:function"`` returning a list of
    :class:`backend.notifications.rules.Addressed` (whom, the template's values, the
    deep link, the dedupe key), read from the subject's **current** state — renders
    ``title`` and ``body`` (``str.format`` placeholders, e.g. ``{account_no}``) and
    writes the messages with ``notify_many``'s dedupe. ``kind`` is a
    ``backend.notifications.kinds.MessageKind`` value (its channels: inbox, push, SMS).
    ``name`` is the handler's stable name (``<event>`` handled by ``messages.<name>``).
    """

    name: str
    event: str
    kind: str
    recipients: str | Callable[..., Awaitable[Any]]
    title: str
    body: str
    horizon: timedelta | None = None


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Check:
    """One line of ``shuiwu check``: a health or consistency check an operator runs after
    an upgrade or from monitoring. ``run(runtime)`` reads only; it never repairs."""

    name: str
    run: str | CheckFunction
    description: str = ""


@dataclass(frozen=True, slots=True)
class Gateway:
    """An outside service a domain calls through a blocking SDK (Alipay, WeChat Pay,
    JPush, SMS, a bank): see docs/gateways.md.

    ``kind`` names it everywhere: the service ``gateway.<kind>`` the hosts offer (a
    :class:`backend.gateways.client.GatewayClient` with a thread pool of its own),
    ``shuiwu fake-gateway <kind>``, the ``gateway.<kind>`` line of ``shuiwu check`` and
    the ``gateway`` column of ``gateway_exchanges``. ``settings`` is a subclass of
    :class:`backend.gateways.settings.GatewaySettings` with its own env prefix
    (``SHUIWU_<KIND>_``): the endpoint, the secrets, the pool size and the timeout.
    ``fake`` is ``"module:function"`` taking the loaded settings and returning the
    local fake's ASGI app (``backend.gateways.http.fake_gateway_app``). ``check`` replaces
    the default check (settings read, the endpoint reachable). A gateway where money
    moves declares ``keeps_exchanges=True``: each call's request and answer are kept,
    with the settings' secrets and the ``secrets`` keys (beside the usual ones) redacted.
    """

    kind: str
    title: str
    settings: type[BaseModel]
    fake: str | None = None
    check: str | CheckFunction | None = None
    keeps_exchanges: bool = False
    secrets: frozenset[str] = frozenset()
    description: str = ""


@dataclass(frozen=True, slots=True)
class DataSubject:
    """Whom ``shuiwu privacy export|erase`` is about (docs/privacy.md): a resident known
    by a phone number. ``token`` (a keyed hash of the phone: the same on every run, and
    nobody without the secret key finds the phone from it) makes the :attr:`pseudonym`
    that replaces their identity on erasure; ``aliases`` are the names the export found
    them under (a household's registered name), which free text elsewhere (the
    operation log) may carry beside the phone. ``log_identifiers`` are further strings
    that identify them in the operation log (an address, an ID number as the log masks
    it), replaced by the pseudonym on erasure; ``log_references`` name the records about
    them (a household's global id and account number), whose log entries erasure also
    rewrites."""

    phone: str
    token: str
    now: datetime
    aliases: frozenset[str] = frozenset()
    log_identifiers: frozenset[str] = frozenset()
    log_references: frozenset[str] = frozenset()
    # The utility's time zone (an owner's dates start at its midnight).
    timezone: str = "Asia/Shanghai"

    @property
    def pseudonym(self) -> str:
        return f"已注销用户 {self.token}"


@dataclass(frozen=True, slots=True)
class PersonalSection:
    """One part of a privacy export: the rows of one table (or one view of it) held
    about the subject, each row a dict of column name → JSON value. ``names`` are the
    subject's names found in these rows (:attr:`DataSubject.aliases` on erasure);
    ``log_identifiers`` and ``log_references`` what these rows give of
    :attr:`DataSubject.log_identifiers` and :attr:`DataSubject.log_references`. None of
    the three is exported."""

    key: str
    title: str
    rows: list[dict[str, Any]]
    names: frozenset[str] = frozenset()
    log_identifiers: frozenset[str] = frozenset()
    log_references: frozenset[str] = frozenset()


# (session, subject) -> the sections; (session, subject) -> {what changed: how many rows}.
PersonalExport = Callable[["AsyncSession", DataSubject], Awaitable[list[PersonalSection]]]
PersonalErase = Callable[["AsyncSession", DataSubject], Awaitable[dict[str, int]]]


@dataclass(frozen=True, slots=True)
class PersonalData:
    """What a domain holds about a resident, for the PIPL rights to a copy and to
    deletion (``shuiwu privacy export|erase``, ``backend.privacy``; docs/privacy.md).

    ``export(session, subject)`` returns the sections found by the subject's phone;
    ``erase(session, subject)`` replaces their identity in place (the caller commits;
    a second run changes nothing) and returns what it changed. Exports run in domain
    order, then the erasures in reverse (a domain still finds the subject through the
    rows of the domains before it), all in one transaction.

    ``held`` and ``excluded`` account for every column of the domain's tables whose
    name looks personal (``tests/test_privacy.py`` walks the metadata): ``held`` maps
    ``"table.column"`` to what export and erase do with it, ``excluded`` to why it is
    no resident's data (a place's name, a staff member's, a device's). A new such column fails that test until it is
    declared in one of them.
    """

    export: str | PersonalExport | None = None
    erase: str | PersonalErase | None = None
    held: Mapping[str, str] = field(default_factory=dict)
    excluded: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """What ``shuiwu demo load`` asked for, handed to every domain's demo step.

    ``areas`` is filled by the step that creates the area tree (archives) with the named
    areas later steps need (``"company"``, ``"east"``: their ids).
    """

    households: int
    seed: int
    readings: bool
    now: datetime
    timezone: str
    progress: Callable[[str], None]
    # Who the demo's automatic steps act as (the alarm sweep): the system actor.
    actor: Principal
    areas: dict[str, int] = field(default_factory=dict)
    # The demo's logins by role code ("cashier": "cashier"), for steps that act as one of
    # them (payments' history is taken at the counter by the demo cashier).
    logins: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HttpHost:
    """What a domain's ``routes(host)`` function receives from the app: the settings,
    the write and read database handles and the services of the declarations (plus the
    app's own: ``auth_policy``, ``client_limiter``)."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    read_engine: AsyncEngine
    services: Mapping[str, Any]


@dataclass(frozen=True, slots=True, eq=False)  # compared and hashed by identity: caches key on domain sets
class Domain:
    """Everything one domain adds to the host. See the module docstring for the schema
    module's protocol and docs/domains.md for a worked example."""

    name: str
    title: str
    # Modules holding the domain's tables (imported for the shared metadata: Alembic, tests).
    models: tuple[str, ...] = ()
    # The schema module ("backend.archives.schema"), see the module docstring.
    schema: str | None = None
    # "module:function" taking an HttpHost and returning Starlette routes.
    routes: str | None = None
    menus: tuple[Menu, ...] = ()
    # Permissions the demo roles get from this domain, by demo role code ("cashier", "repair").
    # The administrator gets every permission and the unit manager all but API clients'.
    demo_grants: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # The operation log's names: modules that are not menus, and the 操作 of each action
    # this domain writes (every mutation, and its HTTP routes' actions).
    log_modules: tuple[LogModule, ...] = ()
    operations: tuple[Operation, ...] = ()
    jobs: tuple[Job, ...] = ()
    handlers: tuple[Handler, ...] = ()
    # Modules declaring the event payload classes this domain owns (backend.events).
    events: tuple[str, ...] = ()
    # "module:function" taking the Settings and returning {service name: object} offered to
    # other domains (GraphQL context.services, Runtime.services).
    services: str | None = None
    checks: tuple[Check, ...] = ()
    # {command name: "module:typer_app"}: Typer sub-apps mounted on the ``shuiwu`` command.
    commands: Mapping[str, str] = field(default_factory=dict)
    # "module:function" (session, plan: DemoPlan) -> None, run by ``shuiwu demo load`` in domain order.
    demo: str | None = None
    # "module:function" (settings: Settings, api_url: str) -> {name: value}: environment
    # variables ``shuiwu demo run`` sets before it starts anything (the API, the job worker,
    # the local fakes all read them), e.g. payments' generated test merchants file.
    demo_environment: str | None = None
    # "module:function" (settings: Settings, database_url: str, stop: asyncio.Event) ->
    # Awaitable[None]: what ``shuiwu demo run`` runs beside the API and the job worker
    # until ``stop`` is set, then lets finish (remote: the meter simulator standing in for
    # the demo's simulated bus, and the acquisition worker serving it).
    demo_run: str | None = None
    # A pydantic-settings class read with its own env prefix (SHUIWU_<NAME>_…), offered
    # to the domain's code as the service ``settings.<name>`` (Runtime.settings_group).
    settings: type[BaseModel] | None = None
    # Outside services the domain calls (docs/gateways.md): each offered as the service
    # ``gateway.<kind>``, faked by ``shuiwu fake-gateway <kind>``, checked by ``shuiwu check``.
    gateways: tuple[Gateway, ...] = ()
    # What the domain holds about a resident, found by phone (``shuiwu privacy``).
    personal_data: PersonalData | None = None
    # Events that become messages (MessageRule): sent by the notifications domain's handler.
    messages: tuple[MessageRule, ...] = ()
    # "module:function" (runtime, session, event, rule) that sends every installed domain's
    # MessageRule: declared by the one domain that owns messages (notifications).
    message_sender: str | None = None


def load(reference: Any) -> Any:
    """The object a ``"module:attribute"`` reference names (or the module, without ``:``);
    anything that is not a string is returned as it is."""
    if not isinstance(reference, str):
        return reference
    module_name, _, attribute = reference.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def message_handlers(domains: tuple[Domain, ...]) -> list[Handler]:
    """One handler per :class:`MessageRule` of ``domains`` (``messages.<rule name>`` of the
    rule's event), run by the domain that declares ``message_sender``; none without it."""
    senders = [domain.message_sender for domain in domains if domain.message_sender is not None]
    if len(senders) > 1:
        raise ValueError("two domains declare a message_sender")
    if not senders:
        return []
    sender = senders[0]
    from backend.events.service import EFFECT_HORIZON

    def runner(rule: MessageRule) -> Callable[..., Awaitable[None]]:
        async def run(runtime: Runtime, session: AsyncSession, event: Any) -> None:
            await load(sender)(runtime, session, event, rule)
        return run

    return [Handler(rule.event, f"messages.{rule.name}", runner(rule),
                    horizon=rule.horizon if rule.horizon is not None else EFFECT_HORIZON)
            for domain in domains for rule in domain.messages]


def system_permissions(domains: tuple[Domain, ...]) -> frozenset[str]:
    """What the system actor holds: the union of what ``domains``' jobs and handlers declare."""
    jobs = (permission for domain in domains for job in domain.jobs for permission in job.permissions)
    handlers = (permission for domain in domains for handler in domain.handlers for permission in handler.permissions)
    return frozenset((*jobs, *handlers))


def system_principal(domains: tuple[Domain, ...]) -> Principal:
    """The system actor of ``domains`` (``backend.auth.system``): who jobs, handlers and
    the demo's automatic steps act as."""
    from backend.auth.system import system_actor

    return system_actor(system_permissions(domains))


def settings_group_key(domain_name: str) -> str:
    """The service name a domain's settings group is offered under: ``settings.<name>``."""
    return f"settings.{domain_name}"


def load_settings_group(domain: Domain) -> Any:
    """A domain's settings group, read from the environment with its own prefix; a bad
    value stops the process at start with one line naming it (as ``load_settings``)."""
    assert domain.settings is not None
    return read_settings(domain.settings)


def read_settings(group: type[BaseModel]) -> Any:
    """A settings group (a pydantic-settings class) read from the environment; a bad
    value is a ``SettingsError`` of one line naming it (as ``load_settings``)."""
    from pydantic import ValidationError

    from backend.settings import SettingsError

    try:
        return group()
    except ValidationError as exc:
        first = exc.errors()[0]
        prefix = str(group.model_config.get("env_prefix", ""))
        name = prefix + "_".join(str(part) for part in first["loc"]).upper()
        raise SettingsError(f"bad setting {name}: {first['msg']}") from None


def import_event_payloads(domains: tuple[Domain, ...]) -> None:
    """Import the modules declaring ``domains``' event payloads (``Domain.events``), so
    every kind is registered before a handler is declared for it or an event is read."""
    for domain in domains:
        for module in domain.events:
            importlib.import_module(module)


def declared_gateways(domains: tuple[Domain, ...]) -> dict[str, Gateway]:
    """Every gateway ``domains`` declare, by kind; two with one kind are refused."""
    gateways: dict[str, Gateway] = {}
    for domain in domains:
        for gateway in domain.gateways:
            if gateway.kind in gateways:
                raise ValueError(f"two gateways are of the kind {gateway.kind!r}")
            gateways[gateway.kind] = gateway
    return gateways


def collect_services(
    settings: Settings, domains: tuple[Domain, ...], *, sessions: async_sessionmaker[AsyncSession] | None = None,
) -> dict[str, Any]:
    """What the declarations offer, by name: each ``Domain.services`` function's result,
    each domain's settings group under ``settings.<name>``, and each declared gateway's
    client under ``gateway.<kind>`` (its settings read from the environment; ``sessions``
    is where a gateway that keeps exchanges writes them). The app puts it in the
    GraphQL context and the HTTP host, the worker in the Runtime. Two domains offering
    one name is a mistake, refused at start."""
    import_event_payloads(domains)  # the app and the worker both start here
    services: dict[str, Any] = {}

    def offer(name: str, offered: Any) -> None:
        if name in services:
            raise ValueError(f"two domains offer the service {name!r}")
        services[name] = offered

    for domain in domains:
        if domain.settings is not None:
            offer(settings_group_key(domain.name), load_settings_group(domain))
        if domain.services is not None:
            for name, offered in load(domain.services)(settings).items():
                offer(name, offered)
    if any(domain.gateways for domain in domains):
        from backend.gateways.client import open_gateway, service_name

        for gateway in declared_gateways(domains).values():
            offer(service_name(gateway.kind), open_gateway(gateway, sessions=sessions))
    return services


async def close_services(services: Mapping[str, Any]) -> None:
    """Let the services that hold connections of their own (the file storage's S3
    client) release them: each one with an ``aclose()`` is awaited once. The app's and
    the job worker's shutdown call it."""
    for offered in services.values():
        closer = getattr(offered, "aclose", None)
        if callable(closer):
            await closer()
