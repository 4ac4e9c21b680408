"""Webhooks for third parties (docs/webhooks.md): endpoints an API client registers, the
deliveries the ``domain_events`` outbox drives, and sending them.

**None is lost.** The fan-out is an event handler (:func:`fan_out`, one ``Handler`` per
subscribable kind, all named ``webhooks.fanout``): the relay hands it each event once as a
job, and in the handler's transaction (the one that records ``handled_events``) it writes
one ``webhook_deliveries`` row per matching endpoint and defers one ``webhooks.deliver``
job per row through the jobs seam, in that same transaction. Events emitted while no
worker runs wait in the outbox unrelayed; a worker that dies mid-job has its job picked
again (PgQueuer's heartbeat), and the delivery row, not the job, is the truth: a job whose
delivery is no longer pending does nothing.

**Sending** (:func:`deliver`): the job resolves the URL's host once, checks every address
(``backend.webhooks.ssrf``) and connects to that address with the Host header and TLS name
kept, so DNS cannot move it after the check; posts the fixed body with a fresh timestamp
and signature through httpx (async, no redirects followed, no proxy from the
environment), at most ``concurrency`` requests at once per worker; records the attempt
(status code, duration, error, the answer's first 500 characters). A 2xx succeeds it; any
other answer or error defers the next attempt ``backoff_base_s * 2**(n-1)`` later (capped
at ``backoff_max_s``) until ``max_attempts``, then the delivery is failed. An address the
guard refuses at delivery fails it at once (retrying cannot help; replay after fixing),
and so does an endpoint or client disabled since the delivery was made (nothing is sent).

**Scope**: data is narrowed per kind to the client's areas (``backend.webhooks.kinds``);
nothing visible, no delivery. An inactive client or endpoint, or a client that lost the
kind's read scope, gets nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Select, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.models import ApiClient
from backend.auth.principal import Principal
from backend.auth.service.api_clients import client_visible
from backend.db import transaction
from backend.errors import DomainError, NotFound, ValidationFailed
from backend.events.service import Event
from backend.runtime import Runtime
from backend.webhooks import errors, signing
from backend.webhooks.kinds import KINDS, scoped_data
from backend.webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from backend.webhooks.settings import WebhookSettings
from backend.webhooks.ssrf import resolve_target

DELIVER_JOB = "webhooks.deliver"
MAX_ENDPOINTS_PER_CLIENT = 20
EXCERPT_CHARS = 500
USER_AGENT = "shuiwu-webhooks/1"


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class IssuedEndpoint:
    endpoint: WebhookEndpoint
    secret: str  # shown once


async def acting_client(session: AsyncSession, *, actor: Principal, client_pk: int | None) -> ApiClient:
    """The API client whose endpoints ``actor`` works on: an API client, itself (it may not
    name another); staff holding ``webhooks:manage``, the named client when it lies in
    their scope (NOT_FOUND otherwise)."""
    if actor.kind.value == "client":
        if client_pk is not None and client_pk != actor.id:
            raise NotFound(field="clientId")
        client_pk = actor.id
    else:
        actor.require("webhooks:manage")
        if client_pk is None:
            raise NotFound(field="clientId")
    scope = None if actor.kind.value == "client" else actor.scope_patterns()
    statement = select(ApiClient).where(ApiClient.id == client_pk)  # type: ignore[arg-type]
    if scope is not None:
        statement = statement.where(client_visible(scope))
    client = (await session.execute(statement)).scalars().first()
    if client is None:
        raise NotFound(field="clientId")
    return client


def _check_event_types(client: ApiClient, event_types: Sequence[str]) -> list[str]:
    wanted = sorted(set(event_types))
    if not wanted:
        raise errors.WebhookEventTypeInvalid("至少订阅一种事件", "Subscribe to at least one event type")
    unknown = [kind for kind in wanted if kind not in KINDS]
    if unknown:
        raise errors.WebhookEventTypeInvalid(f"不可订阅的事件类型: {', '.join(unknown)}",
                                             f"Not subscribable: {', '.join(unknown)}")
    missing = [kind for kind in wanted if KINDS[kind].permission not in client.scopes]
    if missing:
        raise errors.WebhookEventTypeInvalid(
            f"第三方未获授权查看: {', '.join(KINDS[k].permission for k in missing)}",
            f"The client lacks the scope {', '.join(KINDS[k].permission for k in missing)}")
    return wanted


async def register_endpoint(
    session: AsyncSession, *, actor: Principal, client_pk: int | None, url: str, event_types: Sequence[str],
    allow_private: bool, station_secret: str, now: datetime,
) -> IssuedEndpoint:
    """Register ``url`` for ``event_types`` for a client (see :func:`acting_client`); the
    secret is generated, returned once and stored sealed. Refusals (URL form, DNS, a
    refused address, kinds, the per-client cap) write nothing."""
    client = await acting_client(session, actor=actor, client_pk=client_pk)
    kinds = _check_event_types(client, event_types)
    await resolve_target(url, allow_private=allow_private)
    count = (await session.execute(text("SELECT count(*) FROM webhook_endpoints WHERE api_client_id = :id"),
                                   {"id": client.id})).scalar_one()
    if count >= MAX_ENDPOINTS_PER_CLIENT:
        raise errors.WebhookEndpointLimit()
    secret = signing.new_secret()
    assert client.id is not None
    endpoint = WebhookEndpoint(api_client_id=client.id, url=url, event_types=kinds,
                               secret_sealed=signing.seal(station_secret, secret), created_at=now)
    session.add(endpoint)
    await session.flush()
    return IssuedEndpoint(endpoint, secret)


async def _endpoint_for(session: AsyncSession, actor: Principal, endpoint_pk: int) -> tuple[WebhookEndpoint, ApiClient]:
    endpoint = (await session.execute(
        select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_pk).with_for_update()  # type: ignore[arg-type]
    )).scalars().first()
    if endpoint is None:
        raise NotFound(field="id")
    try:
        client = await acting_client(session, actor=actor, client_pk=endpoint.api_client_id)
    except NotFound:
        raise NotFound(field="id") from None
    return endpoint, client


async def update_endpoint(
    session: AsyncSession, *, actor: Principal, endpoint_pk: int, url: str | None, event_types: Sequence[str] | None,
    active: bool | None, allow_private: bool,
) -> WebhookEndpoint:
    """Change an endpoint's URL (checked as at registration), event types or activity."""
    endpoint, client = await _endpoint_for(session, actor, endpoint_pk)
    problems: list[DomainError] = []
    kinds = None
    if event_types is not None:
        try:
            kinds = _check_event_types(client, event_types)
        except errors.WebhookEventTypeInvalid as refused:
            problems.append(refused)
    if url is not None:
        try:
            await resolve_target(url, allow_private=allow_private)
        except (errors.WebhookUrlInvalid, errors.WebhookHostUnresolved, errors.WebhookAddressRefused) as refused:
            problems.append(refused)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ValidationFailed(problems)
    if url is not None:
        endpoint.url = url
    if kinds is not None:
        endpoint.event_types = kinds
    if active is not None:
        endpoint.is_active = active
    await session.flush()
    return endpoint


async def rotate_endpoint_secret(
    session: AsyncSession, *, actor: Principal, endpoint_pk: int, station_secret: str, now: datetime,
) -> IssuedEndpoint:
    """A new secret for the endpoint, returned once; deliveries sent from now on (retries
    included) are signed with it."""
    endpoint, _ = await _endpoint_for(session, actor, endpoint_pk)
    secret = signing.new_secret()
    endpoint.secret_sealed = signing.seal(station_secret, secret)
    endpoint.secret_rotated_at = now
    await session.flush()
    return IssuedEndpoint(endpoint, secret)


async def delete_endpoint(session: AsyncSession, *, actor: Principal, endpoint_pk: int) -> int:
    """Delete the endpoint with its deliveries and their attempts; returns its id."""
    endpoint, _ = await _endpoint_for(session, actor, endpoint_pk)
    await session.delete(endpoint)
    await session.flush()
    return endpoint_pk


def endpoints_statement(actor: Principal) -> Select[Any]:
    """The endpoints ``actor`` may see: a client its own; staff those of clients in scope."""
    statement = select(WebhookEndpoint).join(ApiClient, ApiClient.id == WebhookEndpoint.api_client_id)  # type: ignore[arg-type]
    if actor.kind.value == "client":
        statement = statement.where(WebhookEndpoint.api_client_id == actor.id)  # type: ignore[arg-type]
    else:
        statement = statement.where(client_visible(actor.scope_patterns()))
    return statement.order_by(WebhookEndpoint.id)  # type: ignore[arg-type]


def deliveries_statement(actor: Principal, *, endpoint_pk: int | None, status: DeliveryStatus | None) -> Select[Any]:
    """The deliveries of the endpoints ``actor`` may see, newest first."""
    visible = endpoints_statement(actor).with_only_columns(WebhookEndpoint.__table__.c.id).order_by(None)  # type: ignore[attr-defined]
    statement = select(WebhookDelivery).where(WebhookDelivery.endpoint_id.in_(visible))  # type: ignore[attr-defined]
    if endpoint_pk is not None:
        statement = statement.where(WebhookDelivery.endpoint_id == endpoint_pk)  # type: ignore[arg-type]
    if status is not None:
        statement = statement.where(WebhookDelivery.status == status)  # type: ignore[arg-type]
    return statement.order_by(WebhookDelivery.id.desc())  # type: ignore[union-attr]


async def attempts_of(session: AsyncSession, *, actor: Principal, delivery_pk: int) -> list[WebhookAttempt]:
    """Every attempt of a delivery ``actor`` may see, oldest first (NOT_FOUND otherwise)."""
    visible = deliveries_statement(actor, endpoint_pk=None, status=None).where(
        WebhookDelivery.id == delivery_pk)  # type: ignore[arg-type]
    if (await session.execute(visible)).first() is None:
        raise NotFound(field="deliveryId")
    rows = await session.execute(select(WebhookAttempt).where(
        WebhookAttempt.delivery_id == delivery_pk).order_by(WebhookAttempt.id))  # type: ignore[arg-type]
    return list(rows.scalars())


async def replay_delivery(session: AsyncSession, *, actor: Principal, delivery_pk: int, now: datetime) -> WebhookDelivery:
    """Send a finished delivery again (a new series of attempts; the same body, with a new
    timestamp and signature). The caller defers :data:`DELIVER_JOB` in the same
    transaction (:func:`defer_delivery`). A pending one is refused."""
    if actor.kind.value != "client":
        actor.require("webhooks:manage")
    visible = deliveries_statement(actor, endpoint_pk=None, status=None).where(
        WebhookDelivery.id == delivery_pk).with_for_update(of=WebhookDelivery)  # type: ignore[arg-type]
    delivery: WebhookDelivery | None = (await session.execute(visible)).scalars().first()
    if delivery is None:
        raise NotFound(field="id")
    if delivery.status is DeliveryStatus.pending:
        raise errors.WebhookDeliveryPending()
    delivery.status = DeliveryStatus.pending
    delivery.attempts = 0
    delivery.replays += 1
    delivery.next_attempt_at = now
    delivery.finished_at = None
    await session.flush()
    return delivery


async def defer_delivery(defer: Any, session: AsyncSession, *, delivery: WebhookDelivery, now: datetime,
                         at: datetime | None = None) -> None:
    """Queue the next attempt of ``delivery`` (``defer`` is ``backend.jobs.defer_job``) in
    the caller's transaction; the key names the series and attempt, so each is queued once."""
    await defer(session, job=DELIVER_JOB, dedupe_key=f"{delivery.id}:{delivery.replays}:{delivery.attempts + 1}",
                now=now, at=at, payload={"delivery_id": delivery.id})


# --------------------------------------------------------------------------- fan-out


_SUBSCRIBERS = text(
    """
    SELECT e.id AS endpoint_id, e.api_client_id,
           ARRAY(SELECT a.path FROM api_client_areas ca JOIN areas a ON a.id = ca.area_id
                 WHERE ca.api_client_id = c.id ORDER BY a.path) AS paths
    FROM webhook_endpoints e JOIN api_clients c ON c.id = e.api_client_id
    WHERE e.is_active AND c.is_active AND :kind = ANY(e.event_types) AND :permission = ANY(c.scopes)
    ORDER BY e.id
    """
)


def delivery_body(event: Event, data: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON document every attempt of a delivery posts."""
    assert event.created_at is not None
    return {"id": str(event.id), "type": event.kind, "created_at": event.created_at.isoformat(), "data": dict(data)}


async def fan_out(runtime: Runtime, session: AsyncSession, event: Event) -> None:
    """The ``webhooks.fanout`` handler: one delivery per active endpoint subscribed to the
    event's kind whose client may see part of it, and one deliver job each, in the
    handler's transaction."""
    kind = KINDS.get(event.kind)
    if kind is None:
        return
    subscribers = (await session.execute(_SUBSCRIBERS, {"kind": kind.kind, "permission": kind.permission})).all()
    now = runtime.now()
    data_by_scope: dict[tuple[str, ...], dict[str, Any] | None] = {}
    for endpoint_id, _client, paths in subscribers:
        scope = tuple(paths)
        if scope not in data_by_scope:
            data_by_scope[scope] = await scoped_data(session, kind.kind, event.payload, scope)
        data = data_by_scope[scope]
        if data is None:
            continue
        inserted = (await session.execute(text(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, status, attempts,"
            " next_attempt_at, created_at, replays)"
            " VALUES (:endpoint, :event, :kind, CAST(:body AS jsonb), 'pending', 0, :now, :now, 0)"
            " ON CONFLICT (endpoint_id, event_id) DO NOTHING RETURNING id"),
            {"endpoint": endpoint_id, "event": event.id, "kind": kind.kind,
             "body": json.dumps(delivery_body(event, data), ensure_ascii=False), "now": now})).first()
        if inserted is None:
            continue
        delivery = WebhookDelivery(id=inserted[0], endpoint_id=endpoint_id, event_id=event.id, event_type=kind.kind,
                                   body={}, status=DeliveryStatus.pending, created_at=now)
        await defer_delivery(runtime.service("defer_job"), session, delivery=delivery, now=now)


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True, slots=True)
class AttemptResult:
    status_code: int | None
    duration_ms: int
    error: str | None
    excerpt: str | None
    refused: bool = False  # the SSRF guard refused the address, or the endpoint is disabled: no retry

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


_semaphores: dict[tuple[int, int], asyncio.Semaphore] = {}


def _limit(concurrency: int) -> asyncio.Semaphore:
    # One per event loop (a worker process has one) and size: a semaphore belongs to a loop.
    key = (id(asyncio.get_running_loop()), concurrency)
    if key not in _semaphores:
        _semaphores[key] = asyncio.Semaphore(concurrency)
    return _semaphores[key]


def backoff_delay(settings: WebhookSettings, failed_attempts: int) -> timedelta:
    """How long after the ``failed_attempts``-th failure the next attempt waits."""
    return timedelta(seconds=min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (failed_attempts - 1)))


async def post_once(url: str, *, body: bytes, headers: Mapping[str, str], settings: WebhookSettings) -> AttemptResult:
    """One POST of ``body`` to ``url`` through the SSRF guard (resolve once, check, connect
    to that address with the Host header and TLS server name kept).

    Always an :class:`AttemptResult`, never an exception, so every attempt is recorded and
    no delivery stays pending: resolving, and then the exchange (connect, send, the answer's
    first bytes), are each bounded by ``timeout_s`` as a whole (httpx's own timeout bounds
    each read, and a receiver trickling bytes would outlast it), and anything unexpected
    is a failed attempt naming the error."""
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    def failed(error: BaseException) -> AttemptResult:
        if isinstance(error, TimeoutError):
            return AttemptResult(None, elapsed(), f"timed out after {settings.timeout_s:g} s", None)
        return AttemptResult(None, elapsed(), f"{type(error).__name__}: {error}"[:500], None)

    try:
        async with asyncio.timeout(settings.timeout_s):
            target = await resolve_target(url, allow_private=settings.allow_private)
    except errors.WebhookAddressRefused as refused:
        return AttemptResult(None, elapsed(), f"refused: {refused.reason} address", None, refused=True)
    except (errors.WebhookUrlInvalid, errors.WebhookHostUnresolved) as invalid:
        return AttemptResult(None, elapsed(), invalid.message_en, None)
    except Exception as resolve_error:  # recorded as the attempt's failure
        return failed(resolve_error)
    request_headers = {**headers, "Host": target.host_header, "Content-Type": "application/json",
                       "User-Agent": USER_AGENT}
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    # The bound starts once a slot is held: waiting for one is not the receiver's time.
    async with _limit(settings.concurrency):
        try:
            async with asyncio.timeout(settings.timeout_s), httpx.AsyncClient(
                    timeout=settings.timeout_s, trust_env=False, follow_redirects=False) as client:
                request = client.build_request("POST", target.connect_url, content=body, headers=request_headers,
                                               extensions=extensions)
                response = await client.send(request, stream=True)
                try:
                    chunk = b""
                    async for part in response.aiter_bytes():
                        chunk += part
                        if len(chunk) >= EXCERPT_CHARS * 4:
                            break
                finally:
                    await response.aclose()
        except Exception as exchange_error:  # httpx's, the bound's, or any other: a failed attempt
            return failed(exchange_error)
    excerpt = chunk.decode("utf-8", "replace")[:EXCERPT_CHARS]
    error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    return AttemptResult(response.status_code, elapsed(), error, excerpt)


def delivery_headers(*, delivery_id: int, kind: str, secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "X-Shuiwu-Event": kind,
        "X-Shuiwu-Delivery": str(delivery_id),
        "X-Shuiwu-Timestamp": str(timestamp),
        "X-Shuiwu-Signature": signing.signature(secret, timestamp, body),
    }


_PENDING = text(
    """
    SELECT d.id, d.event_type, d.body, d.attempts, d.replays, e.url, e.secret_sealed,
           e.is_active AND c.is_active AS enabled
    FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
    JOIN api_clients c ON c.id = e.api_client_id
    WHERE d.id = :id AND d.status = 'pending'
    """
)


async def deliver(runtime: Runtime, payload: Mapping[str, Any]) -> AttemptResult | None:
    """The ``webhooks.deliver`` job: one attempt of a pending delivery (None: it is no
    longer pending, or gone), recorded with its outcome in one transaction."""
    settings: WebhookSettings = runtime.settings_group("webhooks")
    delivery_pk = int(payload["delivery_id"])
    async with runtime.sessions() as session:
        row = (await session.execute(_PENDING, {"id": delivery_pk})).first()
    if row is None:
        return None
    # The body as stored, serialised once: what is signed is what is sent.
    body = json.dumps(row.body, ensure_ascii=False, separators=(",", ":")).encode()
    secret = signing.unseal(runtime.settings.secret(), row.secret_sealed)
    timestamp = int(runtime.now().timestamp())
    if row.enabled:
        result = await post_once(row.url, body=body, settings=settings, headers=delivery_headers(
            delivery_id=delivery_pk, kind=row.event_type, secret=secret, timestamp=timestamp, body=body))
    else:
        # Disabled since the delivery was made: nothing is sent, and it fails at once (replayable).
        result = AttemptResult(None, 0, "endpoint or client disabled", None, refused=True)
    now = runtime.now()
    async with transaction(runtime.sessions) as session:
        delivery = (await session.execute(select(WebhookDelivery).where(
            WebhookDelivery.id == delivery_pk).with_for_update())).scalars().first()  # type: ignore[arg-type]
        # A replay or another job moved it meanwhile: record the attempt, decide nothing.
        current = delivery is not None and delivery.status is DeliveryStatus.pending and (
            delivery.attempts, delivery.replays) == (row.attempts, row.replays)
        if delivery is None:
            return result
        session.add(WebhookAttempt(delivery_id=delivery_pk, attempted_at=now, status_code=result.status_code,
                                   duration_ms=result.duration_ms, error=result.error, response_excerpt=result.excerpt))
        if not current:
            return result
        delivery.attempts += 1
        if result.succeeded:
            delivery.status, delivery.finished_at, delivery.next_attempt_at = DeliveryStatus.succeeded, now, None
        elif result.refused or delivery.attempts >= settings.max_attempts:
            delivery.status, delivery.finished_at, delivery.next_attempt_at = DeliveryStatus.failed, now, None
        else:
            delivery.next_attempt_at = now + backoff_delay(settings, delivery.attempts)
            await defer_delivery(runtime.service("defer_job"), session, delivery=delivery, now=now,
                                 at=delivery.next_attempt_at)
        await session.flush()
    return result

