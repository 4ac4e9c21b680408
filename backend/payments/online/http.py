"""The notify routes (支付结果通知) the platforms post to: ``POST /pay/alipay/notify``
(Alipay's form), ``POST /pay/wechat/notify`` (WeChat Pay v2's XML) and ``POST
/pay/wechat/v3/notify`` (v3's JSON with its ``Wechatpay-*`` signature headers).

Each body is bounded (:data:`~backend.payments.online.notify.NOTIFY_MAX_BODY_BYTES`,
refused with 413 while it streams in) and handed to
:func:`backend.payments.online.notify.receive_notification`, whose transactions have
committed when it returns: the answer (``success`` / ``SUCCESS``) is sent only after the
credit is durable. Anonymous by nature (the platforms sign, they do not log in).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.clock import utcnow
from backend.domain import HttpHost
from backend.edge import body_limit
from backend.payments.online.models import GatewayApi
from backend.payments.online.notify import NOTIFY_MAX_BODY_BYTES, receive_notification
from backend.payments.online.registry import NOTIFY_PATHS, online_payments


def routes(host: HttpHost) -> list[Route]:
    online = online_payments(host.services)
    tz = host.settings.tz

    def notify_route(api: GatewayApi) -> Route:
        @body_limit(NOTIFY_MAX_BODY_BYTES)
        async def notify(request: Request) -> Response:
            body = await request.body()
            outcome = await receive_notification(host.sessions, online=online, api=api, headers=request.headers,
                                                 body=body, now=utcnow(), tz=tz)
            answer = outcome.answer
            return Response(answer.body, answer.status, media_type=answer.media_type)

        return Route(NOTIFY_PATHS[api], notify, methods=["POST"], name=f"notify_{api.value}")

    return [notify_route(api) for api in GatewayApi]
