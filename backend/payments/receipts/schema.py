"""GraphQL for receipts (票据): layouts, printing (one or a batch: a download URL of the
PDF), numbered form stock (领用, 作废, 核销). Thin: the rules live in
``backend.payments.receipts.service`` and ``forms``.

The payments schema module merges ``Query`` and ``Mutation`` into its own
(``strawberry.tools.merge_types``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.scalars import JSON
from strawberry.types import Info

from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.domain import settings_group_key
from backend.errors import Forbidden
from backend.files.service import FileStore
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Requires, RequiresAny
from backend.graphql.relay import decode_id, encode_id
from backend.payments.counter import Operator
from backend.payments.receipts import forms, service
from backend.payments.receipts.forms import FormStock
from backend.payments.receipts.http import receipt_url
from backend.payments.receipts.layout import CATALOGUE, PAPER_SIZES, parse_layout
from backend.payments.receipts.models import ReceiptFormBatch, ReceiptFormVoid, ReceiptLayout
from backend.payments.receipts.render import ReceiptFont
from backend.payments.receipts.service import PrintedReceipts

PRINT = [Requires("receipts:print")]
MANAGE = [Requires("receipts:manage")]
PRINT_OR_MANAGE = [RequiresAny("receipts:print", "receipts:manage")]
# A receipt PDF is kept a day (a reprint is a new print: 补打), its link usable again for
# half an hour: a browser's PDF viewer and a retried print job fetch it more than once.
RECEIPT_RETENTION = timedelta(days=1)
RECEIPT_LINK_TTL_S = 1800
MAX_RECEIPT_BYTES = 20 * 1024 * 1024


@strawberry.type(name="ReceiptField", description="A field a receipt layout may place (its key) and its label on "
                 "blank paper. Besides these, custom:<name> prints a fixed text.")
class ReceiptFieldType:
    key: str
    label: str


@strawberry.type(name="ReceiptPaperSize", description="A named paper size (241x93: continuous pre-printed receipts).")
class ReceiptPaperSizeType:
    name: str
    width_mm: float
    height_mm: float


@strawberry.type(name="ReceiptLayout", description="票据格式: paper, margins, pre-printed or not, numbered or not, "
                 "header, footer and fields (docs/receipts.md). ``spec`` is the stored document, as saveReceiptLayout "
                 "takes it.")
class ReceiptLayoutType:
    id: strawberry.ID | None = strawberry.field(description="Null for the built-in default layout while it is not "
                                                "stored: the first print on it (no layoutId) stores it.")
    name: str
    is_default: bool
    paper: str | None = strawberry.field(description="The named paper size, if the layout uses one (A4, A5, 241x93…).")
    width_mm: float
    height_mm: float
    preprinted: bool = strawberry.field(description="Printing onto pre-printed forms: values only, at their offsets.")
    numbered: bool = strawberry.field(description="Each print takes a form number from the cashier's stock.")
    spec: JSON  # type: ignore[valid-type]
    updated_at: datetime | None = strawberry.field(description="Null for the built-in default not stored yet.")
    updated_by: str

    @classmethod
    def from_row(cls, row: ReceiptLayout) -> ReceiptLayoutType:
        spec = parse_layout(row.spec)
        layout_id = encode_id("ReceiptLayout", row.id) if row.id is not None else None
        return cls(id=layout_id, name=row.name, is_default=row.is_default, paper=spec.paper,
                   width_mm=spec.width, height_mm=spec.height, preprinted=spec.preprinted, numbered=spec.numbered,
                   spec=spec.to_json(), updated_at=getattr(row, "updated_at", None), updated_by=row.updated_by)  # type: ignore[arg-type]


@strawberry.type(name="ReceiptPrint", description="One printed receipt: 打印, or 补打 when ``reprint``.")
class ReceiptPrintType:
    payment_id: strawberry.ID
    form_no: str | None = strawberry.field(description="The numbered form it was printed on (票号).")
    reprint: bool
    printed_by: str
    printed_at: datetime


@strawberry.type(name="ReceiptFormBatch", description="票据领用: a range of numbered forms issued to a cashier.")
class ReceiptFormBatchType:
    id: strawberry.ID
    operator_id: strawberry.ID
    first_form_no: str
    last_form_no: str
    count: int
    issued_by: str
    issued_at: datetime

    @classmethod
    def from_row(cls, row: ReceiptFormBatch) -> ReceiptFormBatchType:
        assert row.id is not None
        return cls(id=encode_id("ReceiptFormBatch", row.id), operator_id=encode_id("StaffUser", row.operator_id),
                   first_form_no=forms.format_form_no(row, row.first_no),
                   last_form_no=forms.format_form_no(row, row.last_no), count=row.last_no - row.first_no + 1,
                   issued_by=row.issued_by, issued_at=row.issued_at)


@strawberry.type(name="ReceiptFormStock", description="票据核销: a cashier's forms; issued = used + voided + left.")
class ReceiptFormStockType:
    operator_id: strawberry.ID
    operator_name: str
    issued: int
    used: int
    voided: int
    left: int
    next_form_no: str | None = strawberry.field(description="The number the cashier's next print takes.")

    @classmethod
    def from_stock(cls, stock: FormStock) -> ReceiptFormStockType:
        return cls(operator_id=encode_id("StaffUser", stock.operator_id), operator_name=stock.operator_name,
                   issued=stock.issued, used=stock.used, voided=stock.voided, left=stock.left,
                   next_form_no=stock.next_form_no)


@strawberry.type
class ReceiptLayoutPayload:
    layout: ReceiptLayoutType | None
    errors: list[UserError]


@strawberry.type
class PrintReceiptsPayload:
    url: str | None = strawberry.field(description="The PDF (one page per receipt), a signed link for half an hour, "
                                       "in the caller's login session, while they hold receipts:print and the payments "
                                       "are in their scope.")
    prints: list[ReceiptPrintType]
    errors: list[UserError]


@strawberry.type
class ReceiptFormBatchPayload:
    batch: ReceiptFormBatchType | None
    errors: list[UserError]


@strawberry.type
class VoidReceiptFormPayload:
    form_no: str | None
    errors: list[UserError]


@strawberry.input(description="保存票据格式: a new layout (no id) or a change of one. ``spec`` is the layout document "
                  "(docs/receipts.md): a bad one is RECEIPT_LAYOUT_INVALID naming the part at fault.")
class SaveReceiptLayoutInput:
    id: strawberry.ID | None = None
    name: str
    spec: JSON  # type: ignore[valid-type]
    make_default: bool = False


@strawberry.input(description="票据领用: forms prefix + firstNo … lastNo, zero-padded to digits (default: lastNo's).")
class IssueReceiptFormsInput:
    operator_id: strawberry.ID
    prefix: str = ""
    first_no: int
    last_no: int
    digits: int | None = None
    note: str = ""


def _operator(info: Info) -> Operator:
    caller: Principal = info.context.caller
    return Operator(caller.id if caller.kind is PrincipalKind.staff else None, caller.name)


def _font(info: Info) -> ReceiptFont:
    found = info.context.services.get(settings_group_key("payments"))
    return found.font if found is not None else ReceiptFont()  # type: ignore[no-any-return]


def _prints(printed: PrintedReceipts | None) -> list[ReceiptPrintType]:
    if printed is None:
        return []
    return [ReceiptPrintType(payment_id=encode_id("Payment", row.payment_id), form_no=row.form_no, reprint=row.reprint,
                             printed_by=row.printed_by, printed_at=row.printed_at) for row in printed.prints]


async def _print(info: Info, action: str, payment_ids: list[strawberry.ID], layout_id: strawberry.ID | None,
                 form_no: str | None, field: str) -> PrintReceiptsPayload:
    context = info.context
    caller: Principal = context.caller
    files: FileStore = context.services["files"]
    holder: dict[str, str] = {}

    async def work(session: AsyncSession) -> PrintedReceipts:
        ids = [decode_id(value, "Payment", field=field) for value in payment_ids]
        layout = decode_id(layout_id, "ReceiptLayout", field="layoutId") if layout_id is not None else None
        now = utcnow()
        printed = await service.print_receipts(
            session, payment_ids=ids, layout_id=layout, form_no=form_no, operator=_operator(info), now=now,
            font=_font(info), tz=context.settings.tz, scope_patterns=caller.scope_patterns())
        # Stored before the prints commit: a storage failure refuses the print and records nothing.
        stored = await files.put(context.sessions, content=printed.pdf, content_type="application/pdf",
                                 max_bytes=MAX_RECEIPT_BYTES, purpose="receipts", filename=printed.filename,
                                 owner=caller, now=now, retention=RECEIPT_RETENTION)
        # Reusable for half an hour; each download checks receipts:print and the scope again.
        holder["url"] = receipt_url(files, key=stored.key, payment_ids=ids, principal=caller, now=now,
                                    ttl_s=RECEIPT_LINK_TTL_S)
        return printed

    def describe(printed: PrintedReceipts | None) -> str:
        if printed is None:
            return "打印票据"
        marks = "补打" if any(row.reprint for row in printed.prints) else "打印"
        forms_used = [row.form_no for row in printed.prints if row.form_no]
        return f"{marks}票据 {len(printed.prints)} 张" + (f" (票号 {', '.join(forms_used)})" if forms_used else "")

    def payload(printed: PrintedReceipts | None, errors: list[UserError]) -> PrintReceiptsPayload:
        return PrintReceiptsPayload(url=holder.get("url") if printed else None, prints=_prints(printed), errors=errors)

    return await run_mutation(info, action=action, describe=describe, payload=payload, work=work)


@strawberry.type
class Query:
    @strawberry.field(permission_classes=PRINT_OR_MANAGE, description="票据格式: every layout, the default first.")
    async def receipt_layouts(self, info: Info) -> list[ReceiptLayoutType]:
        # Read only: the default layout is stored by the first print on it, never by a read.
        async with info.context.read() as session:
            return [ReceiptLayoutType.from_row(row) for row in await service.receipt_layouts(session)]

    @strawberry.field(permission_classes=PRINT_OR_MANAGE, description="The fields a layout may place.")
    def receipt_fields(self) -> list[ReceiptFieldType]:
        return [ReceiptFieldType(key=key, label=label) for key, label in CATALOGUE.items()]

    @strawberry.field(permission_classes=PRINT_OR_MANAGE, description="Named paper sizes a layout's paper may be.")
    def receipt_paper_sizes(self) -> list[ReceiptPaperSizeType]:
        return [ReceiptPaperSizeType(name=name, width_mm=width, height_mm=height)
                for name, (width, height) in PAPER_SIZES.items()]

    @strawberry.field(permission_classes=PRINT_OR_MANAGE, description="票据核销: each cashier's form stock, or "
                      "operatorId's. Without receipts:manage, only the caller's own.")
    async def receipt_form_stock(self, info: Info, operator_id: strawberry.ID | None = None) -> list[ReceiptFormStockType]:
        caller: Principal = info.context.caller
        operator = decode_id(operator_id, "StaffUser", field="operatorId") if operator_id is not None else None
        if not caller.has("receipts:manage"):
            if operator is not None and operator != caller.id:
                raise Forbidden()
            operator = caller.id
        async with info.context.read() as session:
            return [ReceiptFormStockType.from_stock(stock) for stock in await forms.form_stock(session,
                                                                                                operator_id=operator)]


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=MANAGE, description="保存票据格式: create or change a layout; a bad one is "
                         "RECEIPT_LAYOUT_INVALID naming the part at fault, a taken name DUPLICATE.")
    async def save_receipt_layout(self, info: Info, input: SaveReceiptLayoutInput) -> ReceiptLayoutPayload:
        async def work(session: AsyncSession) -> ReceiptLayout:
            layout_id = decode_id(input.id, "ReceiptLayout") if input.id is not None else None
            spec: Any = input.spec
            return await service.save_layout(session, layout_id=layout_id, name=input.name, spec=spec,
                                             make_default=input.make_default, by=info.context.caller.name,
                                             now=utcnow())

        return await run_mutation(
            info, action="saveReceiptLayout", describe=lambda _: f"保存票据格式 {input.name}",
            payload=lambda row, errors: ReceiptLayoutPayload(
                layout=ReceiptLayoutType.from_row(row) if row is not None else None, errors=errors),
            work=work)

    @strawberry.mutation(permission_classes=PRINT, description="打印票据 (补打 when printed before): the PDF's URL. "
                         "On a numbered layout it takes the caller's next form, or formNo (RECEIPT_FORM_NOT_IN_STOCK, "
                         "RECEIPT_FORM_USED, RECEIPT_FORM_VOID). A reversed payment prints marked 已冲正.")
    async def print_receipt(self, info: Info, payment_id: strawberry.ID, layout_id: strawberry.ID | None = None,
                            form_no: str | None = None) -> PrintReceiptsPayload:
        return await _print(info, "printReceipt", [payment_id], layout_id, form_no, "paymentId")

    @strawberry.mutation(permission_classes=PRINT, description="批量打印票据: one PDF, one page per payment in the "
                         "order given (at most 200).")
    async def print_receipts(self, info: Info, payment_ids: list[strawberry.ID],
                             layout_id: strawberry.ID | None = None) -> PrintReceiptsPayload:
        return await _print(info, "printReceipts", payment_ids, layout_id, None, "paymentIds")

    @strawberry.mutation(permission_classes=MANAGE, description="票据领用: issue a range of numbered forms to a "
                         "cashier; a range overlapping one issued before is RECEIPT_FORMS_OVERLAP.")
    async def issue_receipt_forms(self, info: Info, input: IssueReceiptFormsInput) -> ReceiptFormBatchPayload:
        async def work(session: AsyncSession) -> ReceiptFormBatch:
            return await forms.issue_forms(
                session, operator_id=decode_id(input.operator_id, "StaffUser", field="operatorId"),
                prefix=input.prefix, first_no=input.first_no, last_no=input.last_no, digits=input.digits,
                issued_by=info.context.caller.name, now=utcnow(), note=input.note)

        return await run_mutation(
            info, action="issueReceiptForms",
            describe=lambda batch: (f"票据领用 {forms.format_form_no(batch, batch.first_no)}-"
                                    f"{forms.format_form_no(batch, batch.last_no)}") if batch else "票据领用",
            payload=lambda batch, errors: ReceiptFormBatchPayload(
                batch=ReceiptFormBatchType.from_row(batch) if batch is not None else None, errors=errors),
            work=work)

    @strawberry.mutation(permission_classes=PRINT, description="票据作废: void a spoiled form of one's own stock "
                         "(anyone's with receipts:manage); a voided form is never printed on.")
    async def void_receipt_form(self, info: Info, form_no: str, reason: str) -> VoidReceiptFormPayload:
        caller: Principal = info.context.caller

        async def work(session: AsyncSession) -> ReceiptFormVoid:
            return await forms.void_form(session, form_no=form_no, reason=reason, operator_id=_operator(info).id,
                                         voided_by=caller.name, now=utcnow(), may_manage=caller.has("receipts:manage"))

        return await run_mutation(
            info, action="voidReceiptForm", describe=lambda _: f"票据作废 {form_no}",
            payload=lambda void, errors: VoidReceiptFormPayload(form_no=void.form_no if void else None, errors=errors),
            work=work)


__all__ = ["Mutation", "Query"]
