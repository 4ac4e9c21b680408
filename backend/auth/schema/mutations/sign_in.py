"""Signing in and out: staff password login, refresh, logout, the resident's SMS code and
code login, and OAuth2 client credentials; and the tokens they return."""

from __future__ import annotations

from datetime import datetime

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth import service
from backend.auth.errors import RefreshTokenReused
from backend.auth.principal import Principal
from backend.auth.schema.mutations.common import OkPayload, _ok, _over_limit, _policy
from backend.auth.schema.types import Viewer
from backend.auth.sms.senders import sender_for
from backend.clock import utcnow
from backend.errors import DomainError
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.limits import AuthMutation
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Authenticated, Public


@strawberry.type(description="Tokens of a login. Send the access token as `Authorization: Bearer …`.")
class AuthTokens:
    access_token: str
    access_token_expires_at: datetime
    refresh_token: str | None
    refresh_token_expires_at: datetime | None


@strawberry.type
class AuthPayload:
    tokens: AuthTokens | None
    viewer: Viewer | None
    errors: list[UserError]


def _auth_payload(pair: service.TokenPair | None, errors: list[UserError]) -> AuthPayload:
    if pair is None:
        return AuthPayload(tokens=None, viewer=None, errors=errors)
    return AuthPayload(
        tokens=AuthTokens(
            access_token=pair.access_token, access_token_expires_at=pair.access_expires_at,
            refresh_token=pair.refresh_token, refresh_token_expires_at=pair.refresh_expires_at,
        ),
        viewer=Viewer.of(pair.principal),
        errors=errors,
    )


@strawberry.type
class LoginCodePayload:
    expires_at: datetime | None
    errors: list[UserError]


async def _issue_client_token(
    info: Info, session: AsyncSession, client_id: str, client_secret: str, now: datetime, policy: service.AuthPolicy
) -> service.TokenPair:
    issued = await service.issue_client_token(session, client_id=client_id, client_secret=client_secret, now=now, policy=policy)
    limiter = info.context.services.get("client_limiter")
    if limiter is not None:
        # As /oauth/token: a client past its rate gets no new login session (rolled back).
        limiter.check(issued.principal)
    return issued


@strawberry.type
class SignInMutations:
    @strawberry.mutation(permission_classes=[Public], description="Staff login with username and password.",
                         extensions=[AuthMutation()])
    async def login(self, info: Info, username: str, password: str) -> AuthPayload:
        context: Context = info.context
        policy, now = _policy(info), utcnow()

        return await run_mutation(
            info, action="login",
            describe=lambda _: f"用户 {username[:64]} 登录",
            payload=_auth_payload,
            before=lambda session: service.claim_login_attempt(session, username=username, now=now, policy=policy, ip=context.ip,
                                                               over_limit=_over_limit(info)),
            work=lambda session: service.login_staff(
                session, username=username, password=password, now=now, policy=policy,
                ip=context.ip, user_agent=context.user_agent,
            ),
            audit_input={"username": username},
            actor=lambda pair: pair.principal,
            claimed_name=username,
        )

    @strawberry.mutation(permission_classes=[Public], description="New tokens for a refresh token (which rotates).",
                         extensions=[AuthMutation()])
    async def refresh_token(self, info: Info, refresh_token: str) -> AuthPayload:
        policy, now = _policy(info), utcnow()

        async def revoke_if_reused(session: AsyncSession, refusal: DomainError) -> None:
            if isinstance(refusal, RefreshTokenReused):
                await service.logout(session, session_id=refusal.session_id, now=now)

        return await run_mutation(
            info, action="refreshToken", describe=lambda _: "刷新令牌", payload=_auth_payload,
            work=lambda session: service.refresh_tokens(session, refresh_token=refresh_token, now=now, policy=policy),
            audit_input={}, actor=lambda pair: pair.principal, on_refusal=revoke_if_reused,
        )

    @strawberry.mutation(permission_classes=[Authenticated], description="End this login: its tokens stop working.")
    async def logout(self, info: Info) -> OkPayload:
        principal: Principal = info.context.caller
        now = utcnow()

        async def work(session: AsyncSession) -> None:
            if principal.session_id is not None:
                await service.logout(session, session_id=principal.session_id, now=now)

        return await run_mutation(info, action="logout", describe=lambda _: f"{principal.name} 退出登录",
                                  payload=_ok, work=work, audit_input={})

    @strawberry.mutation(permission_classes=[Public], description="Send a login code to a resident's mobile.",
                         extensions=[AuthMutation()])
    async def request_login_code(self, info: Info, phone: str) -> LoginCodePayload:
        policy, now, ip = _policy(info), utcnow(), info.context.ip
        sender = sender_for(info.context.services)
        claimed: list[bool] = []

        async def claim(session: AsyncSession) -> None:
            await service.claim_code_send(session, phone=phone, now=now, policy=policy, ip=ip, over_limit=_over_limit(info))
            claimed.append(True)

        async def release(session: AsyncSession, refusal: DomainError) -> None:
            # Only this request's own claim, and only when the send was refused for sure
            # (the work rolled back): a refused claim is another request's minute.
            if claimed:
                await service.release_code_claim(session, phone=phone, now=now)

        return await run_mutation(
            info, module="resident", action="requestLoginCode", describe=lambda _: f"向 {phone[:20]} 发送验证码",
            payload=lambda expires, errors: LoginCodePayload(expires_at=expires, errors=errors),
            before=claim,
            work=lambda session: service.request_login_code(session, phone=phone, now=now, policy=policy, sender=sender),
            audit_input={"phone": phone}, on_refusal=release,
        )

    @strawberry.mutation(permission_classes=[Public], description="Resident login with mobile number and code.",
                         extensions=[AuthMutation()])
    async def resident_login(self, info: Info, phone: str, code: str) -> AuthPayload:
        context: Context = info.context
        policy, now = _policy(info), utcnow()

        return await run_mutation(
            info, module="resident", action="residentLogin", describe=lambda _: f"住户 {phone[:20]} 登录",
            payload=_auth_payload,
            before=lambda session: service.claim_code_attempt(session, phone=phone, now=now, policy=policy, ip=context.ip,
                                                              over_limit=_over_limit(info)),
            work=lambda session: service.login_resident(
                session, phone=phone, code=code, now=now, policy=policy, ip=context.ip, user_agent=context.user_agent
            ),
            audit_input={"phone": phone}, actor=lambda pair: pair.principal,
        )

    @strawberry.mutation(permission_classes=[Public], description="OAuth2 client credentials for third parties.",
                         extensions=[AuthMutation()])
    async def issue_client_token(self, info: Info, client_id: str, client_secret: str) -> AuthPayload:
        policy, now = _policy(info), utcnow()
        return await run_mutation(
            info, action="issueClientToken", describe=lambda _: f"第三方 {client_id[:64]} 获取访问令牌",
            payload=_auth_payload,
            work=lambda session: _issue_client_token(info, session, client_id, client_secret, now, policy),
            audit_input={"clientId": client_id}, actor=lambda pair: pair.principal,
        )
