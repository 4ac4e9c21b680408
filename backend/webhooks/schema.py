"""GraphQL for webhooks (事件推送): an API client's own endpoints and deliveries, and the
staff desk over the clients in their scope (docs/webhooks.md).

Every field admits ``webhooks:manage`` or ``webhooks:read``; the service decides what
each caller reaches: an API client only its own endpoints (it may not name another
client), staff the clients in their scope, and only staff with ``webhooks:manage``
change another client's endpoints or replay.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.scalars import JSON
from strawberry.types import Info

from backend.clock import utcnow
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest, paginate, selects
from backend.graphql.permissions import RequiresAny
from backend.graphql.relay import Node, decode_id, encode_id
from backend.webhooks import service
from backend.webhooks.kinds import KINDS
from backend.webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint

WEBHOOKS = [RequiresAny("webhooks:manage", "webhooks:read")]

WebhookDeliveryStatus = strawberry.enum(DeliveryStatus, name="WebhookDeliveryStatus",
                                        description="等待发送或重试 / 成功 (2xx) / 失败 (重试用尽或地址被拒)")


@strawberry.type(name="WebhookEndpoint", description="A URL an API client receives events at (推送地址).")
class WebhookEndpointType(Node):
    client_id: strawberry.ID = strawberry.field(description="The ApiClient it belongs to.")
    url: str
    event_types: list[str]
    is_active: bool
    created_at: datetime
    secret_rotated_at: datetime | None

    @classmethod
    def from_row(cls, row: WebhookEndpoint) -> WebhookEndpointType:
        assert row.id is not None
        return cls(id=encode_id("WebhookEndpoint", row.id), client_id=encode_id("ApiClient", row.api_client_id),
                   url=row.url, event_types=list(row.event_types), is_active=row.is_active, created_at=row.created_at,
                   secret_rotated_at=row.secret_rotated_at)


@strawberry.type(name="WebhookDelivery", description="One event for one endpoint and where its sending stands.")
class WebhookDeliveryType(Node):
    endpoint_id: strawberry.ID
    event_id: strawberry.ID = strawberry.field(description="The domain event's id (the body's id).")
    event_type: str
    status: WebhookDeliveryStatus  # type: ignore[valid-type]
    attempts: int = strawberry.field(description="Attempts of the current series (a replay starts a new one).")
    replays: int
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    body: JSON = strawberry.field(description="What every attempt posts: {id, type, created_at, data}.")

    @classmethod
    def from_row(cls, row: WebhookDelivery) -> WebhookDeliveryType:
        assert row.id is not None
        return cls(id=encode_id("WebhookDelivery", row.id), endpoint_id=encode_id("WebhookEndpoint", row.endpoint_id),
                   event_id=strawberry.ID(str(row.event_id)), event_type=row.event_type, status=row.status,
                   attempts=row.attempts, replays=row.replays, next_attempt_at=row.next_attempt_at,
                   created_at=row.created_at, finished_at=row.finished_at, body=row.body)  # type: ignore[arg-type]


@strawberry.type(name="WebhookAttempt", description="One POST of a delivery.")
class WebhookAttemptType:
    attempted_at: datetime
    status_code: int | None = strawberry.field(description="The answer's status; null: no answer (error, timeout).")
    duration_ms: int
    error: str | None
    response_excerpt: str | None = strawberry.field(description="The answer's first 500 characters.")

    @classmethod
    def from_row(cls, row: WebhookAttempt) -> WebhookAttemptType:
        return cls(attempted_at=row.attempted_at, status_code=row.status_code, duration_ms=row.duration_ms,
                   error=row.error, response_excerpt=row.response_excerpt)


@strawberry.type(name="WebhookEventType", description="An event kind third parties may subscribe to.")
class WebhookEventKindType:
    kind: str
    permission: str = strawberry.field(description="The API client scope it needs.")
    description: str


@strawberry.type
class Query:
    @strawberry.field(permission_classes=WEBHOOKS, description="The event types a webhook may subscribe to.")
    def webhook_event_types(self) -> list[WebhookEventKindType]:
        return [WebhookEventKindType(kind=k.kind, permission=k.permission, description=k.description)
                for k in KINDS.values()]

    @strawberry.field(permission_classes=WEBHOOKS,
                      description="Webhook endpoints: an API client's own; for staff, those of clients in scope.")
    async def webhook_endpoints(
        self, info: Info, first: int | None = None, after: str | None = None, last: int | None = None,
        before: str | None = None,
    ) -> Connection[WebhookEndpointType]:
        page = PageRequest.from_args(first, after, last, before)
        async with info.context.read() as session:
            return await paginate(session, service.endpoints_statement(info.context.caller), page,
                                  lambda row: WebhookEndpointType.from_row(row[0]), count=selects(info, "totalCount"))

    @strawberry.field(permission_classes=WEBHOOKS, description="Deliveries of the endpoints you see, newest first.")
    async def webhook_deliveries(
        self, info: Info, endpoint_id: strawberry.ID | None = None, status: WebhookDeliveryStatus | None = None,  # type: ignore[valid-type]
        first: int | None = None, after: str | None = None, last: int | None = None, before: str | None = None,
    ) -> Connection[WebhookDeliveryType]:
        page = PageRequest.from_args(first, after, last, before)
        endpoint = decode_id(endpoint_id, "WebhookEndpoint", field="endpointId") if endpoint_id else None
        statement = service.deliveries_statement(info.context.caller, endpoint_pk=endpoint, status=status)
        async with info.context.read() as session:
            return await paginate(session, statement, page, lambda row: WebhookDeliveryType.from_row(row[0]),
                                  count=selects(info, "totalCount"))

    @strawberry.field(permission_classes=WEBHOOKS, description="Every attempt of a delivery, oldest first.")
    async def webhook_delivery_attempts(self, info: Info, delivery_id: strawberry.ID) -> list[WebhookAttemptType]:
        pk = decode_id(delivery_id, "WebhookDelivery", field="deliveryId")
        async with info.context.read() as session:
            rows = await service.attempts_of(session, actor=info.context.caller, delivery_pk=pk)
        return [WebhookAttemptType.from_row(row) for row in rows]


@strawberry.input
class CreateWebhookEndpointInput:
    url: str
    event_types: list[str]
    client_id: strawberry.ID | None = strawberry.field(
        default=None, description="Staff: the ApiClient; an API client leaves it out (its own).")


@strawberry.input
class UpdateWebhookEndpointInput:
    id: strawberry.ID
    url: str | None = None
    event_types: list[str] | None = None
    is_active: bool | None = None


@strawberry.type
class WebhookEndpointPayload:
    endpoint: WebhookEndpointType | None
    secret: str | None = strawberry.field(description="The signing secret: only when created or rotated, shown once.")
    errors: list[UserError]


@strawberry.type
class DeleteWebhookEndpointPayload:
    deleted_id: strawberry.ID | None
    errors: list[UserError]


@strawberry.type
class WebhookDeliveryPayload:
    delivery: WebhookDeliveryType | None
    errors: list[UserError]


def _endpoint_payload(result: Any, errors: list[UserError]) -> WebhookEndpointPayload:
    if isinstance(result, service.IssuedEndpoint):
        return WebhookEndpointPayload(endpoint=WebhookEndpointType.from_row(result.endpoint), secret=result.secret,
                                      errors=errors)
    return WebhookEndpointPayload(endpoint=WebhookEndpointType.from_row(result) if result is not None else None,
                                  secret=None, errors=errors)


def _allow_private(info: Info) -> bool:
    return bool(info.context.services["settings.webhooks"].allow_private)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=WEBHOOKS,
                         description="Register a URL for event types; the signing secret is in the payload, once.")
    async def create_webhook_endpoint(self, info: Info, input: CreateWebhookEndpointInput) -> WebhookEndpointPayload:
        context = info.context
        client = decode_id(input.client_id, "ApiClient", field="clientId") if input.client_id else None

        async def work(session: AsyncSession) -> service.IssuedEndpoint:
            return await service.register_endpoint(
                session, actor=context.caller, client_pk=client, url=input.url, event_types=input.event_types,
                allow_private=_allow_private(info), station_secret=context.settings.secret(), now=utcnow())

        return await run_mutation(info, module="webhooks", action="createWebhookEndpoint",
                                  describe=lambda _: f"新增推送地址 {input.url}", payload=_endpoint_payload, work=work)

    @strawberry.mutation(permission_classes=WEBHOOKS, description="Change an endpoint's URL, event types or activity.")
    async def update_webhook_endpoint(self, info: Info, input: UpdateWebhookEndpointInput) -> WebhookEndpointPayload:
        context = info.context
        pk = decode_id(input.id, "WebhookEndpoint")

        async def work(session: AsyncSession) -> WebhookEndpoint:
            return await service.update_endpoint(session, actor=context.caller, endpoint_pk=pk, url=input.url,
                                                 event_types=input.event_types, active=input.is_active,
                                                 allow_private=_allow_private(info))

        return await run_mutation(info, module="webhooks", action="updateWebhookEndpoint",
                                  describe=lambda _: f"修改推送地址 {pk}", payload=_endpoint_payload, work=work)

    @strawberry.mutation(permission_classes=WEBHOOKS, description="A new signing secret, in the payload once.")
    async def rotate_webhook_secret(self, info: Info, id: strawberry.ID) -> WebhookEndpointPayload:
        context = info.context
        pk = decode_id(id, "WebhookEndpoint")

        async def work(session: AsyncSession) -> service.IssuedEndpoint:
            return await service.rotate_endpoint_secret(session, actor=context.caller, endpoint_pk=pk,
                                                        station_secret=context.settings.secret(), now=utcnow())

        return await run_mutation(info, module="webhooks", action="rotateWebhookSecret",
                                  describe=lambda _: f"重置推送密钥 {pk}", payload=_endpoint_payload, work=work)

    @strawberry.mutation(permission_classes=WEBHOOKS, description="Delete an endpoint with its deliveries.")
    async def delete_webhook_endpoint(self, info: Info, id: strawberry.ID) -> DeleteWebhookEndpointPayload:
        context = info.context
        pk = decode_id(id, "WebhookEndpoint")

        async def work(session: AsyncSession) -> int:
            return await service.delete_endpoint(session, actor=context.caller, endpoint_pk=pk)

        return await run_mutation(
            info, module="webhooks", action="deleteWebhookEndpoint", describe=lambda _: f"删除推送地址 {pk}",
            payload=lambda deleted, errors: DeleteWebhookEndpointPayload(
                deleted_id=encode_id("WebhookEndpoint", deleted) if deleted is not None else None, errors=errors),
            work=work)

    @strawberry.mutation(permission_classes=WEBHOOKS,
                         description="Send a finished delivery again (a new series of attempts, the same body).")
    async def replay_webhook_delivery(self, info: Info, id: strawberry.ID) -> WebhookDeliveryPayload:
        context = info.context
        pk = decode_id(id, "WebhookDelivery")

        async def work(session: AsyncSession) -> WebhookDelivery:
            now = utcnow()
            delivery = await service.replay_delivery(session, actor=context.caller, delivery_pk=pk, now=now)
            await service.defer_delivery(context.services["defer_job"], session, delivery=delivery, now=now)
            return delivery

        return await run_mutation(
            info, module="webhooks", action="replayWebhookDelivery", describe=lambda _: f"重放推送 {pk}",
            payload=lambda row, errors: WebhookDeliveryPayload(
                delivery=WebhookDeliveryType.from_row(row) if row is not None else None, errors=errors),
            work=work)
