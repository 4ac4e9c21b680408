"""API clients (第三方接口): register (the secret is shown once), rotate the secret, enable
or disable."""

from __future__ import annotations

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth import service
from backend.auth.models import ApiClient
from backend.auth.schema.mutations.common import _ids
from backend.auth.schema.types import ApiClientType
from backend.clock import utcnow
from backend.graphql.errors import UserError
from backend.graphql.limits import AuthMutation
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id


@strawberry.type
class ApiClientPayload:
    api_client: ApiClientType | None
    client_secret: str | None = strawberry.field(description="Shown once, on create and rotate; store it now.")
    errors: list[UserError]


@strawberry.input
class ApiClientInput:
    name: str
    scopes: list[str]
    area_ids: list[strawberry.ID]
    rate_per_minute: int = 600


def _client_payload(issued: service.IssuedClient | ApiClient | None, errors: list[UserError]) -> ApiClientPayload:
    if issued is None:
        return ApiClientPayload(api_client=None, client_secret=None, errors=errors)
    if isinstance(issued, service.IssuedClient):
        return ApiClientPayload(api_client=ApiClientType.from_row(issued.client), client_secret=issued.secret, errors=errors)
    return ApiClientPayload(api_client=ApiClientType.from_row(issued), client_secret=None, errors=errors)


@strawberry.type
class ApiClientMutations:
    @strawberry.mutation(permission_classes=[Requires("clients:manage")], description="Register a third party; the secret is shown once.",
                         extensions=[AuthMutation()])
    async def create_api_client(self, info: Info, input: ApiClientInput) -> ApiClientPayload:
        actor = info.context.caller

        async def work(session: AsyncSession) -> service.IssuedClient:
            return await service.create_api_client(
                session, actor=actor, name=input.name, scopes=input.scopes,
                area_ids=_ids(input.area_ids, "Area", "areaIds") or (), rate_per_minute=input.rate_per_minute,
            )

        return await run_mutation(info, action="createApiClient",
                                  describe=lambda _: f"新增第三方接口 {input.name[:64]}", payload=_client_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("clients:manage")], description="New secret for a client; old tokens end.",
                         extensions=[AuthMutation()])
    async def rotate_api_client_secret(self, info: Info, id: strawberry.ID) -> ApiClientPayload:
        actor, now = info.context.caller, utcnow()

        async def work(session: AsyncSession) -> service.IssuedClient:
            return await service.rotate_api_client_secret(session, actor=actor, client_pk=decode_id(id, "ApiClient"), now=now)

        return await run_mutation(info, action="rotateApiClientSecret",
                                  describe=lambda r: f"重置第三方接口 {r.client.name if r else id} 的密钥",
                                  payload=_client_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("clients:manage")], description="Enable or disable a client.")
    async def set_api_client_active(self, info: Info, id: strawberry.ID, is_active: bool) -> ApiClientPayload:
        actor, now = info.context.caller, utcnow()

        async def work(session: AsyncSession) -> ApiClient:
            client_pk = decode_id(id, "ApiClient")
            return await service.set_api_client_active(session, actor=actor, client_pk=client_pk, is_active=is_active, now=now)

        return await run_mutation(info, action="setApiClientActive",
                                  describe=lambda c: f"{'启用' if is_active else '停用'}第三方接口 {c.name if c else id}",
                                  payload=_client_payload, work=work)
