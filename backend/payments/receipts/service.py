"""Receipts (票据打印 / 补打): layouts, printing one payment or a batch, and what a print
records. docs/receipts.md is the user's account.

**Printing** (:func:`print_receipts`) renders one page per payment on a layout (the one
named, or the default) and records a ``receipt_prints`` row per page: the first print of
a payment is 打印, every later one 补打 (``reprint``: the page says 补打, and
``payments.receipts_printed`` counts each print). On a numbered layout each page takes a
form number from the printing cashier's stock (:mod:`backend.payments.receipts.forms`),
reprints included: each is a sheet of paper to account for. A refund's receipt says 退费.

**Reversed payments** (已冲正) are printed, marked 已冲正 on the page: a payment query
must show the receipt of any payment, and a mark on the paper is what tells a reader the
money went back. Refusing the print would only hide that.

The caller stores the PDF (the service ``files``) and commits; every refusal is raised
before anything is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.errors import DomainError, ErrorCode, NotFound
from backend.payments.counter import Operator
from backend.payments.models import Payment, PaymentChannel, PaymentKind, PaymentPurpose, PaymentStatus
from backend.payments.receipts import forms
from backend.payments.receipts.errors import ReceiptFormNotInStock
from backend.payments.receipts.layout import DEFAULT_LAYOUT, DEFAULT_LAYOUT_NAME, parse_layout
from backend.payments.receipts.models import ReceiptLayout, ReceiptPrint
from backend.payments.receipts.render import ReceiptContent, ReceiptFont, font_name, render_receipts_async
from backend.payments.receipts.words import amount_in_words
from backend.readings.partitions import as_zone

BATCH_LIMIT = 200  # pages in one batch print
CHANNEL_NAMES = {
    PaymentChannel.cash: "现金", PaymentChannel.transfer: "转账", PaymentChannel.card: "刷卡",
    PaymentChannel.alipay: "支付宝", PaymentChannel.wechat: "微信", PaymentChannel.bank: "银行代收",
    PaymentChannel.other: "其它",
}
PURPOSE_NAMES = {PaymentPurpose.recharge: "预存水费", PaymentPurpose.bills: "缴纳水费"}
REFUND, REPRINT, REVERSED = "退费", "补打", "已冲正"


def money_text(fen: int) -> str:
    """¥1,234.50 (the 小写 amount of a receipt); a negative balance is -¥12.00."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), 100)
    return f"{sign}¥{whole:,}.{part:02d}"


# --------------------------------------------------------------------------- layouts


def builtin_default_layout() -> ReceiptLayout:
    """The default layout as the code defines it (:data:`DEFAULT_LAYOUT`), not stored: what
    :func:`receipt_layouts` shows until it is (``id`` None)."""
    # No updated_at: it was never saved.
    return ReceiptLayout(name=DEFAULT_LAYOUT_NAME, spec=parse_layout(DEFAULT_LAYOUT).to_json(),  # type: ignore[call-arg]
                         is_default=True, updated_by="")


async def default_layout(session: AsyncSession) -> ReceiptLayout:
    """The stored default layout, stored from :data:`DEFAULT_LAYOUT` the first time a print
    needs it (a print records the layout it used): only a print writes it, in its
    audited transaction; reading the layouts never does."""
    found = (await session.execute(select(ReceiptLayout).where(col(ReceiptLayout.is_default)))).scalars().first()
    if found is not None:
        return found
    spec = parse_layout(DEFAULT_LAYOUT).to_json()
    await session.execute(text(
        "INSERT INTO receipt_layouts (name, spec, is_default, updated_by) VALUES (:name, CAST(:spec AS jsonb), true, '') "
        "ON CONFLICT DO NOTHING"), {"name": DEFAULT_LAYOUT_NAME, "spec": _json(spec)})
    found = (await session.execute(select(ReceiptLayout).where(col(ReceiptLayout.is_default)))).scalars().first()
    if found is None:  # a layout of that name exists without being the default: take it as the default
        found = (await session.execute(select(ReceiptLayout).where(
            col(ReceiptLayout.name) == DEFAULT_LAYOUT_NAME).with_for_update())).scalar_one()
        found.is_default = True
        await session.flush()
    return found


def _json(document: Mapping[str, Any]) -> str:
    import orjson

    return orjson.dumps(document).decode()


async def receipt_layouts(session: AsyncSession) -> list[ReceiptLayout]:
    """Every stored layout, the default first; read only. Until a default is stored (by
    the first print on it: :func:`default_layout`) the built-in one leads the list,
    unsaved (:func:`builtin_default_layout`, ``id`` None)."""
    stored = list((await session.execute(select(ReceiptLayout).order_by(
        col(ReceiptLayout.is_default).desc(), col(ReceiptLayout.name)))).scalars())
    if stored and stored[0].is_default:
        return stored
    return [builtin_default_layout(), *stored]


async def save_layout(session: AsyncSession, *, layout_id: int | None, name: str, spec: Mapping[str, Any],
                      make_default: bool, by: str, now: datetime) -> ReceiptLayout:
    """Create (``layout_id`` None) or replace a layout; RECEIPT_LAYOUT_INVALID for a bad
    spec (nothing written), DUPLICATE for a name taken by another layout. With
    ``make_default`` it becomes the default; the default stays one until another is made so."""
    name = name.strip()
    if not name or len(name) > 100:
        raise DomainError("格式名称须为 1 至 100 个字符", "A name is 1 to 100 characters", field="name",
                          code=ErrorCode.REQUIRED if not name else ErrorCode.TOO_LONG)
    document = parse_layout(spec).to_json()
    clash = (await session.execute(select(ReceiptLayout.id).where(  # type: ignore[call-overload]
        col(ReceiptLayout.name) == name, col(ReceiptLayout.id) != (layout_id or 0)))).first()
    if clash is not None:
        raise DomainError("已有同名的票据格式", "A layout of this name exists", field="name", code=ErrorCode.DUPLICATE)
    if layout_id is None:
        layout = ReceiptLayout(name=name, spec=document, is_default=False, updated_at=now, updated_by=by[:100])
        session.add(layout)
    else:
        found = await session.get(ReceiptLayout, layout_id, with_for_update=True)
        if found is None:
            raise NotFound(field="id")
        layout = found
        layout.name, layout.spec, layout.updated_at, layout.updated_by = name, document, now, by[:100]
    await session.flush()
    if make_default and not layout.is_default:
        await session.execute(update(ReceiptLayout).where(col(ReceiptLayout.is_default)).values(is_default=False))
        await session.flush()
        layout.is_default = True
        await session.flush()
    return layout


async def _layout(session: AsyncSession, layout_id: int | None) -> ReceiptLayout:
    if layout_id is None:
        return await default_layout(session)
    layout = await session.get(ReceiptLayout, layout_id)
    if layout is None:
        raise NotFound(field="layoutId")
    return layout


# --------------------------------------------------------------------------- printing


@dataclass(frozen=True, slots=True)
class PrintedReceipts:
    """What a print produced: the rows recorded (in page order) and the PDF to store."""

    prints: list[ReceiptPrint]
    pdf: bytes
    filename: str
    layout: ReceiptLayout


_PAYMENTS = text(
    "SELECT p.id, h.account_no, h.name, h.address, e.balance_after_fen "
    "FROM payments p JOIN households h ON h.id = p.household_id JOIN areas a ON a.id = h.area_id "
    "LEFT JOIN ledger_entries e ON e.id = p.entry_id "
    "WHERE p.id = ANY(:ids) AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))"
)


async def payments_in_scope(session: AsyncSession, *, payment_ids: Sequence[int], scope_patterns: Sequence[str]) -> int:
    """How many of ``payment_ids`` are in the data scope (what a print sees): a receipt's
    download checks them all again."""
    return len((await session.execute(_PAYMENTS, {"ids": list(set(payment_ids)),
                                                  "patterns": list(scope_patterns)})).all())


async def print_receipts(
    session: AsyncSession,
    *,
    payment_ids: Sequence[int],
    operator: Operator,
    now: datetime,
    font: ReceiptFont,
    layout_id: int | None = None,
    form_no: str | None = None,
    tz: str | tzinfo = "Asia/Shanghai",
    scope_patterns: Sequence[str] | None = None,
) -> PrintedReceipts:
    """Print the receipts of ``payment_ids`` (one page each, in that order) on a layout
    (module docstring). A payment outside the scope is NOT_FOUND; ``form_no`` names the
    form of a single print on a numbered layout."""
    ids = list(dict.fromkeys(payment_ids))
    if not ids or len(ids) > BATCH_LIMIT:
        raise DomainError(f"每次打印 1 至 {BATCH_LIMIT} 张票据", f"Print 1 to {BATCH_LIMIT} receipts at a time",
                          field="paymentIds", code=ErrorCode.INVALID)
    # The font first: a host without it refuses before anything is written (and it loads off the loop).
    await asyncio.to_thread(font_name, font)
    layout = await _layout(session, layout_id)
    spec = parse_layout(layout.spec)
    if form_no is not None and (len(ids) > 1 or not spec.numbered):
        raise DomainError("只有在编号票据上单张打印时才能指定票号", "A form number is given only for one print on a "
                          "numbered layout", field="formNo", code=ErrorCode.INVALID)
    found = {row.id: row for row in (await session.execute(_PAYMENTS, {
        "ids": ids, "patterns": list(scope_patterns) if scope_patterns is not None else None})).all()}
    if len(found) != len(ids):
        raise NotFound(field="paymentIds")
    # Locked in id order, so two prints of overlapping batches count their prints in turn.
    payments: dict[int, Payment] = {payment.id: payment for payment in (await session.execute(  # type: ignore[misc]
        select(Payment).where(col(Payment.id).in_(ids)).order_by(col(Payment.id)).with_for_update()
        .execution_options(populate_existing=True))).scalars()}
    assert layout.id is not None
    if spec.numbered and operator.id is None:
        raise ReceiptFormNotInStock(field="formNo")
    # A savepoint: a refusal mid-batch (the stock runs out at page 3) leaves nothing written.
    async with session.begin_nested():
        prints, pages = [], []
        for payment_id in ids:
            payment = payments[payment_id]
            form = (await forms.take_form(session, operator_id=operator.id, form_no=form_no)  # type: ignore[arg-type]
                    if spec.numbered else None)
            printed = ReceiptPrint(
                payment_id=payment_id, layout_id=layout.id, form_batch_id=form.batch_id if form else None,
                form_number=form.number if form else None, form_no=form.form_no if form else None,
                reprint=payment.receipts_printed > 0, printed_by_id=operator.id, printed_by=operator.name[:100],
                printed_at=now)
            session.add(printed)
            await session.flush()  # the form is spent before the next page takes one
            prints.append(printed)
            pages.append(_content(payment, found[payment_id], printed, tz))
        await session.execute(update(Payment).where(col(Payment.id).in_(ids))
                              .values(receipts_printed=Payment.receipts_printed + 1))  # type: ignore[operator]
    pdf = await render_receipts_async(spec, pages, font=font, title=_title(payments, ids))
    return PrintedReceipts(prints, pdf, f"{_title(payments, ids)}.pdf", layout)


async def print_receipt(session: AsyncSession, *, payment_id: int, operator: Operator, now: datetime,
                        font: ReceiptFont, layout_id: int | None = None, form_no: str | None = None,
                        tz: str | tzinfo = "Asia/Shanghai",
                        scope_patterns: Sequence[str] | None = None) -> PrintedReceipts:
    """One payment's receipt (:func:`print_receipts` of one)."""
    return await print_receipts(session, payment_ids=[payment_id], operator=operator, now=now, font=font,
                                layout_id=layout_id, form_no=form_no, tz=tz, scope_patterns=scope_patterns)


def _title(payments: Mapping[int, Payment], ids: Sequence[int]) -> str:
    first = payments[ids[0]]
    return f"收据 {first.serial_no}" if len(ids) == 1 else f"收据 {first.serial_no} 等 {len(ids)} 张"


def _content(payment: Payment, household: Any, printed: ReceiptPrint, tz: str | tzinfo) -> ReceiptContent:
    refund = payment.kind is PaymentKind.refund
    marks = tuple(mark for mark, present in (
        (REFUND, refund), (REPRINT, printed.reprint), (REVERSED, payment.status is PaymentStatus.reversed)) if present)
    reference = payment.reference or ""
    if payment.bank_partner:
        reference = " ".join(part for part in (payment.bank_partner, payment.bank_outlet, reference) if part)
    balance = household.balance_after_fen
    values = {
        "serial_no": payment.serial_no,
        "account_no": household.account_no,
        "household_name": household.name,
        "address": household.address or "",
        "amount": money_text(payment.amount_fen),
        "amount_upper": amount_in_words(payment.amount_fen),
        "channel": CHANNEL_NAMES[payment.channel],
        "purpose": "销户退费" if refund else PURPOSE_NAMES[payment.purpose],
        "paid_at": payment.paid_at.astimezone(as_zone(tz)).strftime("%Y-%m-%d %H:%M"),
        "operator": payment.operator_name,
        "balance_after": money_text(int(balance)) if balance is not None else "",
        "reference": reference,
        "form_no": printed.form_no or "",
    }
    return ReceiptContent(values, marks)


async def receipt_prints(session: AsyncSession, *, payment_id: int) -> list[ReceiptPrint]:
    """A payment's prints, oldest first (打印, then each 补打)."""
    return list((await session.execute(select(ReceiptPrint).where(col(ReceiptPrint.payment_id) == payment_id)
                                       .order_by(col(ReceiptPrint.id)))).scalars())
