"""Payment queries (缴费查询 / 发票打印): ``payments`` and its Excel link, the cashier's
day (``cashierDay``, ``cashierDays``) and the ``node(id:)`` fetcher of ``Payment``."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.errors import BadUserInput, Forbidden, NotFound
from backend.graphql.context import Context
from backend.graphql.pagination import Connection, PageRequest
from backend.graphql.periods import FROM_DAY, TO_DAY
from backend.graphql.permissions import Requires, RequiresAny
from backend.graphql.relay import decode_id
from backend.payments import browse, days
from backend.payments.counter import business_day
from backend.payments.http import PAYMENTS_EXPORT_PATH, filter_of_params
from backend.payments.schema.types import (
    CashierDayType,
    PaymentChannelEnum,
    PaymentKindEnum,
    PaymentStatusEnum,
    PaymentType,
)

READ = [Requires("payments:read")]
DAY = [RequiresAny("counter:collect", "counter:day_all")]
DAY_ALL = "counter:day_all"


async def fetch_payment(context: Any, pk: int) -> PaymentType | None:
    """A payment of a household in the caller's scope (``payments:read``)."""
    principal: Principal | None = context.principal
    if principal is None or not principal.has("payments:read"):
        return None
    async with context.read() as session:
        found = await browse.payment_rows_by_ids(session, [pk], scope_patterns=principal.scope_patterns())
    return PaymentType.from_list_row(found[pk]) if pk in found else None


@strawberry.input(description="Filters of the payments list; each left out filters nothing.")
class PaymentFilterInput:
    area_id: strawberry.ID | None = strawberry.field(default=None, description="Households in this area's subtree.")
    from_: date | None = strawberry.field(default=None, name="from", description=FROM_DAY + " The business day.")
    to: date | None = strawberry.field(default=None, description=TO_DAY + " At most 366 days after `from`.")
    search: str | None = strawberry.field(default=None,
                                          description="用户姓名, 缴费号 (account number) or 流水号, in part.")
    channel: PaymentChannelEnum | None = None  # type: ignore[valid-type]
    bank_partner: str | None = strawberry.field(default=None, description="合作银行, exactly.")
    bank_outlet: str | None = strawberry.field(default=None, description="银行网点, exactly.")
    operator_id: strawberry.ID | None = strawberry.field(default=None, description="收费员 (a StaffUser id).")
    printed: bool | None = strawberry.field(default=None,
                                            description="true: receipt printed at least once; false: never printed.")
    kind: PaymentKindEnum | None = None  # type: ignore[valid-type]
    status: PaymentStatusEnum | None = None  # type: ignore[valid-type]

    def to_params(self) -> dict[str, str]:
        """The filter as the export link's query parameters (those that are set)."""
        values = {"areaId": self.area_id, "from": self.from_, "to": self.to, "search": self.search,
                  "channel": self.channel, "bankPartner": self.bank_partner, "bankOutlet": self.bank_outlet,
                  "operatorId": self.operator_id, "printed": self.printed, "kind": self.kind, "status": self.status}
        params: dict[str, str] = {}
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool):
                params[name] = "true" if value else "false"
            elif isinstance(value, date):
                params[name] = value.isoformat()
            else:
                params[name] = str(getattr(value, "value", value))
        return params

    def to_filter(self) -> browse.PaymentFilter:
        return filter_of_params(self.to_params())


async def _operator(info: Info, session: AsyncSession, operator_id: strawberry.ID | None) -> int:
    """Whose day: the caller's own, or (with ``counter:day_all``) that of a cashier whose
    unit lies in the caller's scope (NOT_FOUND otherwise)."""
    caller: Principal = info.context.caller
    if operator_id is None:
        if caller.kind is not PrincipalKind.staff:
            raise BadUserInput("请指定收费员", "Name the cashier (operatorId)", field="operatorId")
        return caller.id
    wanted = decode_id(operator_id, "StaffUser", field="operatorId")
    if wanted != caller.id:
        if not caller.has(DAY_ALL):
            raise Forbidden()
        reach = await days.cashiers_in_scope(session, caller.scope_patterns())
        if reach is not None and wanted not in reach:
            raise NotFound(field="operatorId")
    return wanted


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ, description="缴费查询 / 发票打印: payments of households in your scope, "
                      "newest first, with the household's 缴费号, name and place.")
    async def payments(self, info: Info, filter: PaymentFilterInput | None = None, first: int | None = None,
                       after: str | None = None) -> Connection[PaymentType]:
        page = PageRequest.from_args(first, after)
        payment_filter = filter.to_filter() if filter is not None else browse.PaymentFilter()
        async with info.context.read() as session:
            found = await browse.payment_page(session, scope_patterns=info.context.caller.scope_patterns(),
                                              payment_filter=payment_filter, offset=page.offset, limit=page.limit)
        return Connection.from_page([PaymentType.from_list_row(row) for row in found.rows], total=found.total,
                                    offset=page.offset)

    @strawberry.field(permission_classes=READ, description="A relative URL downloading `payments` (the same filter, "
                      "every row) as .xlsx, valid 5 minutes without an Authorization header (signed for you and "
                      "this filter).")
    async def payments_export_url(self, info: Info, filter: PaymentFilterInput | None = None) -> str:
        context: Context = info.context
        params = filter.to_params() if filter is not None else {}
        filter_of_params(params)  # a bad filter is refused now, not at download
        return context.signed_link(PAYMENTS_EXPORT_PATH, params)

    @strawberry.field(permission_classes=DAY, description="日结: a cashier's takings on `day` by channel, with the "
                      "ledger's sum for them. Default: your own day; another cashier's needs counter:day_all.")
    async def cashier_day(self, info: Info, day: date | None = None,
                          operator_id: strawberry.ID | None = None) -> CashierDayType:
        wanted = day if day is not None else business_day(utcnow(), info.context.settings.tz)
        async with info.context.read() as session:
            operator = await _operator(info, session, operator_id)
            return CashierDayType.of(await days.cashier_day(session, operator_id=operator, day=wanted))

    @strawberry.field(permission_classes=DAY, description="Cashiers' days in [from, to] (at most 366) with payments "
                      "or a hand-over, newest first: your own, or with counter:day_all those of the cashiers of your areas (or "
                      "`operatorId`'s).")
    async def cashier_days(
        self, info: Info,
        from_: Annotated[date, strawberry.argument(name="from", description=FROM_DAY)],
        to: Annotated[date, strawberry.argument(description=TO_DAY)],
        operator_id: strawberry.ID | None = None,
    ) -> list[CashierDayType]:
        caller: Principal = info.context.caller
        async with info.context.read() as session:
            operators: list[int] | None
            if operator_id is not None or not caller.has(DAY_ALL):
                operators = [await _operator(info, session, operator_id)]
            else:
                operators = await days.cashiers_in_scope(session, caller.scope_patterns())
            found = await days.cashier_days(session, start=from_, end=to, operator_ids=operators)
        return [CashierDayType.of(figures) for figures in found]


NODES = {"Payment": fetch_payment}
