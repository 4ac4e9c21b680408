"""GraphQL for tariffs (水价): ``tariffs`` and ``tariffQuote`` (``tariffs:read``),
``saveTariff`` (``tariffs:manage``) and the anonymous ``publicTariffs`` (公共查询服务:
the versions in force on a day, no login, under the anonymous per-address limits of
``backend.edge.AnonymousGate``). The rules live in ``backend.billing.service``.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives.models import CustomerType
from backend.billing import service
from backend.billing.models import Tariff, TariffCycle
from backend.clock import utcnow
from backend.graphql.errors import UserError
from backend.graphql.limits import Cost
from backend.graphql.mutations import run_mutation
from backend.graphql.periods import FROM_DAY, TO_DAY
from backend.graphql.permissions import Public, Requires
from backend.graphql.scalars import Money
from backend.money import fen_to_yuan

# The archives' enum, by reference: a schema module imports no other package's schema.
CustomerTypeRef = Annotated["CustomerTypeEnum", strawberry.lazy("backend.archives.schema.types")]  # type: ignore[name-defined]  # noqa: F821
TariffCycleEnum = strawberry.enum(TariffCycle, name="TariffCycle", description="The tier cycle: 按月 / 按年")

READ = [Requires("tariffs:read")]
MANAGE = [Requires("tariffs:manage")]
MAX_TARIFF_VERSIONS = 200  # every version of every tariff; a utility keeps tens
MAX_PUBLIC_TARIFFS = 50  # the versions in force, one per tariff (three customer types, a few tariffs each)


@strawberry.type(name="TariffComponent", description="One charge of a tariff (自来水费, 水资源费, 污水处理费, …).")
class TariffComponentType:
    code: str = strawberry.field(description="water | resource | sewage | other:<name>; reports group by it.")
    name: str
    prices: list[Decimal] = strawberry.field(description="Yuan per m³ for each tier, four places.")


@strawberry.type(name="HouseholdSizeRule", description="Limits grow per person above a base (人口增量).")
class HouseholdSizeRuleType:
    base_persons: int
    extra_m3_per_person: Decimal = strawberry.field(description="m³ added to every tier limit per extra person.")


@strawberry.type(name="Tariff", description="One version of a tiered tariff (水价), in force from validFrom.")
class TariffType:
    code: str
    name: str
    customer_type: CustomerTypeRef
    valid_from: date
    cycle: TariffCycleEnum  # type: ignore[valid-type]
    tier_limits: list[Decimal] = strawberry.field(description="m³ per cycle; the last tier is open.")
    components: list[TariffComponentType]
    household_size: HouseholdSizeRuleType | None
    minimum_monthly_charge: Money | None  # type: ignore[valid-type]
    sewage_coefficient: Decimal | None = strawberry.field(
        description="Share of the volume billed as sewage (污水排放系数), applied to sewage lines.")

    @classmethod
    def from_row(cls, tariff: Tariff) -> TariffType:
        rules = tariff.rules
        household = rules.get("household_size")
        coefficient = rules.get("sewage_coefficient")
        return cls(
            code=tariff.code, name=tariff.name, customer_type=tariff.customer_type, valid_from=tariff.valid_from,
            cycle=TariffCycle(rules["cycle"]), tier_limits=[Decimal(v) for v in rules["tier_limits"]],
            components=[TariffComponentType(code=c["code"], name=c["name"], prices=[Decimal(p) for p in c["prices"]])
                        for c in rules["components"]],
            household_size=HouseholdSizeRuleType(base_persons=household["base_persons"],
                                                 extra_m3_per_person=Decimal(household["extra_m3_per_person"]))
            if household else None,
            minimum_monthly_charge=rules.get("minimum_monthly_charge_fen"),
            sewage_coefficient=Decimal(coefficient) if coefficient else None,
        )


@strawberry.type(name="TariffQuoteLine")
class TariffQuoteLineType:
    component: str = strawberry.field(description="The component's code; 'minimum' tops up to the minimum charge.")
    tier: int = strawberry.field(description="1-based tier; 0 on the minimum-charge line.")
    volume: str = strawberry.field(description="m³, four places.")
    price: str = strawberry.field(description="Yuan per m³, four places.")
    amount: Money  # type: ignore[valid-type]
    valid_from: date = strawberry.field(description="The version that priced this line.")


@strawberry.type(name="TariffQuote", description="A volume priced under a tariff: each line rounded once, half-up.")
class TariffQuoteType:
    tariff: str
    volume: str = strawberry.field(description="m³, four places.")
    lines: list[TariffQuoteLineType]
    total: Money  # type: ignore[valid-type]


@strawberry.input(description="A component of a tariff version.")
class TariffComponentInput:
    code: str
    name: str
    prices: list[str] = strawberry.field(description='Yuan per m³ per tier, at most four places ("1.92").')


@strawberry.input
class HouseholdSizeRuleInput:
    base_persons: int
    extra_m3_per_person: Decimal


@strawberry.input(description="A tariff version, as in a tariff file (docs/billing.md).")
class TariffInput:
    code: str
    name: str
    customer_type: CustomerTypeRef
    valid_from: date
    cycle: TariffCycleEnum  # type: ignore[valid-type]
    tier_limits: list[Decimal]
    components: list[TariffComponentInput]
    household_size: HouseholdSizeRuleInput | None = None
    minimum_monthly_charge: Money | None = None  # type: ignore[valid-type]
    sewage_coefficient: Decimal | None = None

    def as_raw(self) -> dict[str, Any]:
        """The input as the mapping a tariff file gives (``service.canonical_rules``)."""
        raw: dict[str, Any] = {
            "code": self.code, "name": self.name, "customer_type": CustomerType(self.customer_type),
            "valid_from": self.valid_from, "cycle": TariffCycle(self.cycle).value, "tier_limits": [str(v) for v in self.tier_limits],
            "components": [{"code": c.code, "name": c.name, "prices": list(c.prices)} for c in self.components],
        }
        if self.household_size is not None:
            raw["household_size"] = {"base_persons": self.household_size.base_persons,
                                     "extra_m3_per_person": str(self.household_size.extra_m3_per_person)}
        if self.minimum_monthly_charge is not None:
            raw["minimum_monthly_charge"] = fen_to_yuan(self.minimum_monthly_charge)
        if self.sewage_coefficient is not None:
            raw["sewage_coefficient"] = str(self.sewage_coefficient)
        return raw


@strawberry.type
class TariffPayload:
    tariff: TariffType | None
    unchanged: bool = strawberry.field(description="The same version already held exactly this content.")
    errors: list[UserError]


def _quote(result: service.Quote) -> TariffQuoteType:
    shown = result.as_json()
    return TariffQuoteType(
        tariff=result.tariff, volume=shown["volume"], total=result.total_fen,
        lines=[TariffQuoteLineType(component=line.component, tier=line.tier, volume=item["volume"],
                                   price=item["price"], amount=line.amount_fen, valid_from=line.valid_from)
               for line, item in zip(result.lines, shown["lines"], strict=True)],
    )


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ, extensions=[Cost(items=MAX_TARIFF_VERSIONS)],
                      description=f"Every tariff version (of one code), by code and validFrom; the first {MAX_TARIFF_VERSIONS}.")
    async def tariffs(self, info: Info, code: str | None = None) -> list[TariffType]:
        async with info.context.read() as session:
            rows = await service.tariff_versions(session, code=code, limit=MAX_TARIFF_VERSIONS)
        return [TariffType.from_row(row) for row in rows]

    @strawberry.field(permission_classes=[Public], extensions=[Cost(items=MAX_PUBLIC_TARIFFS)],
                      description="The tariffs in force on a day (default today), readable without login (公共查询); "
                      f"the first {MAX_PUBLIC_TARIFFS} by code.")
    async def public_tariffs(self, info: Info, on: date | None = None) -> list[TariffType]:
        day = on if on is not None else utcnow().astimezone(info.context.settings.tz).date()
        async with info.context.read() as session:
            rows = await service.tariffs_in_force(session, on=day, limit=MAX_PUBLIC_TARIFFS)
        return [TariffType.from_row(row) for row in rows]

    @strawberry.field(permission_classes=READ, extensions=[Cost(weight=10)],
                      description="Price a volume: on a day, or over from..to (days inclusive) prorated by days "
                      "across a price change. priorVolume: m³ already used in the current tier cycle.")
    async def tariff_quote(
        self, info: Info, tariff: str, volume: Decimal, prior_volume: Decimal = Decimal(0), persons: int | None = None,
        on: Annotated[date | None, strawberry.argument(description="Price on this day.")] = None,
        from_: Annotated[date | None, strawberry.argument(name="from", description=FROM_DAY)] = None,
        to: Annotated[date | None, strawberry.argument(description=TO_DAY)] = None,
    ) -> TariffQuoteType:
        async with info.context.read() as session:
            result = await service.quote(session, code=tariff, volume=volume, prior_volume=prior_volume,
                                         persons=persons, on=on, start=from_, end=to)
        return _quote(result)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=MANAGE,
                         description="Save a tariff version; the same content again is unchanged, different "
                         "content for an existing (code, validFrom) is refused.")
    async def save_tariff(self, info: Info, input: TariffInput) -> TariffPayload:
        raw = input.as_raw()

        async def work(session: AsyncSession) -> service.SavedTariff:
            return await service.save_tariff(session, raw=raw)

        def payload(saved: service.SavedTariff | None, errors: list[UserError]) -> TariffPayload:
            return TariffPayload(tariff=TariffType.from_row(saved.tariff) if saved else None,
                                 unchanged=bool(saved and saved.unchanged), errors=errors)

        return await run_mutation(info, action="saveTariff", describe=lambda _: f"保存水价 {input.code} {input.valid_from}",
                                  payload=payload, work=work, audit_input={"code": input.code,
                                                                           "validFrom": str(input.valid_from)})

