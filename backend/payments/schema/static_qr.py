"""GraphQL for static QR stickers (静态码): signed links to the sticker sheet of an area and
to one household's QR image. The downloads themselves are
:mod:`backend.payments.online.payer.http`'s (``payments:read`` and the scope checked
again there, audited ``printStaticQr``); these fields refuse now what the download would
refuse, so a screen learns it before it opens the link."""

from __future__ import annotations

from enum import StrEnum

import strawberry
from strawberry.types import Info

from backend.billing.scope import area_path_in_scope
from backend.errors import BadUserInput
from backend.graphql.context import Context
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id
from backend.payments.online import static_qr
from backend.payments.online.payer.http import (
    STATIC_QR_PDF_PATH,
    STATIC_QR_PERMISSION,
    STATIC_QR_PNG_PATH,
    STATIC_QR_SVG_PATH,
)
from backend.payments.online.registry import online_payments

READ = [Requires(STATIC_QR_PERMISSION)]


class StaticQrFormat(StrEnum):
    png = "png"
    svg = "svg"


StaticQrFormatEnum = strawberry.enum(StaticQrFormat, name="StaticQrFormat",
                                     description="png (8 pixels a module) or svg (one path, for print shops).")

_PATHS = {StaticQrFormat.png: STATIC_QR_PNG_PATH, StaticQrFormat.svg: STATIC_QR_SVG_PATH}


def _require_public_base_url(context: Context) -> None:
    """A sticker encodes the public base URL: without one there is nothing to print."""
    if not online_payments(context.services).merchants.public_base_url:
        raise BadUserInput("未配置在线支付 (SHUIWU_PAYMENTS_CONFIG 的 public_base_url), 无法生成缴费码",
                           "Online payment is not configured (public_base_url): no QR can be made")


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ, description="A relative URL of the printable PDF of static QR "
                      "stickers (静态缴费码) for every household of the area (a building; a community prints each "
                      "building from a new page): QR, 户号, masked address. Valid 5 minutes (signed for you and "
                      "this area); an area outside your scope is NOT_FOUND.")
    async def static_qr_sheet_url(self, info: Info, area_id: strawberry.ID) -> str:
        context: Context = info.context
        area = decode_id(area_id, "Area", field="areaId")
        _require_public_base_url(context)
        async with context.read() as session:
            await area_path_in_scope(session, area, context.caller.scope_patterns())
        return context.signed_link(STATIC_QR_PDF_PATH, {"areaId": str(area_id)})

    @strawberry.field(permission_classes=READ, description="A relative URL of one household's static QR image "
                      "(what its sticker encodes: the pay page /pay/s/{token}). Valid 5 minutes (signed for you "
                      "and this household); a household outside your scope is NOT_FOUND.")
    async def static_qr_url(self, info: Info, household_id: strawberry.ID,
                            format: StaticQrFormatEnum = StaticQrFormat.png,  # type: ignore[valid-type, assignment]
                            ) -> str:
        context: Context = info.context
        household = decode_id(household_id, "Household", field="householdId")
        _require_public_base_url(context)
        async with context.read() as session:
            await static_qr.household_in_scope(session, household_id=household,
                                               scope_patterns=context.caller.scope_patterns())
        return context.signed_link(_PATHS[StaticQrFormat(format)], {"householdId": str(household_id)})
