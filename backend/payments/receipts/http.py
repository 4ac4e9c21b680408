"""Receipt PDFs over plain HTTP: ``GET /receipts/<yyyy>/<mm>/<dd>/<name>.pdf?payments=…&token=…``.

A print stores its PDF (the files service, purpose ``receipts``: the key is the path
without its leading slash) and answers a link from :func:`receipt_url`, signed for the
caller's login session and for the payments printed (``payments``, their ids). The link
is reusable for :data:`backend.payments.receipts.schema.RECEIPT_LINK_TTL_S` (a browser's
PDF viewer and a retried print job fetch it more than once), so every download checks
again, as the payments export does, that the caller still holds ``receipts:print``
(403 FORBIDDEN otherwise) and that every payment printed is still in their data scope
(404 NOT_FOUND otherwise): a receipt names a household, and revoking the permission or
narrowing the scope must stop its link at once, not half an hour later.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.auth.principal import Principal
from backend.auth.service import AuthPolicy
from backend.clock import utcnow
from backend.domain import HttpHost
from backend.errors import DomainError, ErrorCode, Forbidden, NotAuthenticated, NotFound
from backend.exports.http import check_client_rate, link_holder, refusal
from backend.exports.links import download_url, sign_download_token
from backend.files.http import serve_stored
from backend.files.service import FileStore
from backend.files.storage import check_key
from backend.payments.receipts import service

PURPOSE = "receipts"  # the stored files' purpose: their keys start with receipts/
PRINT_PERMISSION = "receipts:print"
PAYMENTS_PARAM = "payments"


def receipt_url(files: FileStore, *, key: str, payment_ids: Sequence[int], principal: Principal, now: datetime,
                ttl_s: int) -> str:
    """The signed relative URL of the stored receipt PDF ``key`` printing ``payment_ids``
    (module docstring); the caller has just printed them."""
    if not check_key(key).startswith(PURPOSE + "/"):
        raise ValueError(f"not a receipt's key: {key!r}")
    path = "/" + key
    params = {PAYMENTS_PARAM: ",".join(str(payment_id) for payment_id in sorted(set(payment_ids)))}
    token, _ = sign_download_token(secret=files.settings.secret(), purpose=path, principal=principal, params=params,
                                   now=now, ttl_s=ttl_s)
    return download_url(path, params, token)


def routes(host: HttpHost) -> list[Route]:
    sessions = host.sessions
    files: FileStore = host.services["files"]
    policy = AuthPolicy.from_settings(host.settings)

    async def download(request: Request) -> Response:
        key = f"{PURPOSE}/{request.path_params['key']}"
        params = dict(request.query_params)
        signed = params.get("token")
        try:
            check_key(key)
            if not signed:
                raise NotAuthenticated()
            # Reusable until it expires (not spent), its login session checked; the
            # principal as it stands now: permissions and scope of this moment.
            principal = await link_holder(signed, purpose="/" + key, params=params, sessions=sessions, policy=policy,
                                          now=utcnow(), spend=False)
            check_client_rate(request, principal)
            # Signed with the link, so well formed.
            payment_ids = [int(part) for part in params.get(PAYMENTS_PARAM, "").split(",")]
        except DomainError as error:
            return refusal(error, 400 if error.code is ErrorCode.INVALID else 401)
        if not principal.has(PRINT_PERMISSION):
            return refusal(Forbidden(), 403)
        async with sessions() as session:
            visible = await service.payments_in_scope(session, payment_ids=payment_ids,
                                                      scope_patterns=principal.scope_patterns())
        if visible != len(set(payment_ids)):
            return refusal(NotFound(field="payments"), 404)
        return await serve_stored(files, sessions, key)

    return [Route(f"/{PURPOSE}/" + "{key:path}", download, methods=["GET"])]
