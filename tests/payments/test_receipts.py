"""Receipts at the service: a receipt PDF with Chinese text lands each field at its offset
on a pre-printed form (and prints no labels); blank paper prints labels and a ruled
table; a reprint says 补打 and is counted; numbered forms are spent in order and a
voided, used or foreign number is refused with nothing written; a batch is one page per
payment; the CJK font travels inside the PDF."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.errors import DomainError, ErrorCode
from backend.payments.counter import Operator, reverse_payment, take_payment
from backend.payments.models import Payment, PaymentChannel, PaymentPurpose
from backend.payments.receipts import forms, service
from backend.payments.receipts.layout import CATALOGUE
from backend.payments.receipts.models import ReceiptLayout, ReceiptPrint
from backend.payments.receipts.render import ReceiptFont
from tests.billing.factories import at, served_household, tariff
from tests.factories import make_staff
from tests.payments.receipt_pdf import embedded_fonts, pages, run_at, text_runs

NOW = at(2026, 11, 20, 10)
FONT = ReceiptFont()

# A 241×93 pre-printed form: the form carries the title, labels and lines; we print values.
PREPRINTED: dict[str, Any] = {
    "paper": "241x93", "preprinted": True, "header": "不应打印的标题", "footer": "不应打印的页脚",
    "fields": [
        {"key": "serial_no", "x": 40, "y": 20, "font_size": 9},
        {"key": "paid_at", "x": 150, "y": 20, "font_size": 9},
        {"key": "account_no", "x": 40, "y": 30},
        {"key": "household_name", "x": 150, "y": 30, "font_size": 12, "bold": True},
        {"key": "address", "x": 40, "y": 39},
        {"key": "channel", "x": 40, "y": 48},
        {"key": "purpose", "x": 150, "y": 48},
        {"key": "amount_upper", "x": 52.5, "y": 58.5, "font_size": 12, "bold": True},
        {"key": "amount", "x": 185, "y": 58.5, "font_size": 12},
        {"key": "balance_after", "x": 40, "y": 68},
        {"key": "operator", "x": 150, "y": 68},
        {"key": "custom:unit", "x": 40, "y": 80, "text": "城东自来水公司", "label": "收款单位"},
        {"key": "mark", "x": 215, "y": 12, "font_size": 14},
    ],
}


async def cashier(session: AsyncSession) -> Operator:
    staff = await make_staff(session, permissions={"counter:collect", "receipts:print"})
    assert staff.user.id is not None
    return Operator(staff.user.id, staff.user.full_name)


async def paid(session: AsyncSession, operator: Operator, fen: int = 12345, *, key: str | None = None,
               served: Any = None) -> tuple[Any, Payment]:
    served = served or await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    await session.execute(text("UPDATE households SET address = '翠湖小区 3 栋 2 单元 501' WHERE id = :id"),
                          {"id": served.household.id})
    payment = await take_payment(session, account_id=served.account_id, channel=PaymentChannel.cash,
                                 purpose=PaymentPurpose.recharge, amount_fen=fen, confirm_amount_fen=fen,
                                 idempotency_key=key or f"receipt:{served.account_id}:{fen}", operator=operator, now=NOW)
    return served, payment


async def layout(session: AsyncSession, spec: dict[str, Any], name: str) -> int:
    saved = await service.save_layout(session, layout_id=None, name=name, spec=spec, make_default=False, by="管理员",
                                      now=NOW)
    assert saved.id is not None
    return saved.id


async def printed_count(session: AsyncSession, payment_id: int) -> int:
    return int((await session.execute(text("SELECT receipts_printed FROM payments WHERE id = :id"),
                                      {"id": payment_id})).scalar_one())


async def prints_count(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(ReceiptPrint))).scalar_one())


async def test_a_receipt_with_chinese_text_lands_each_field_at_its_offset_on_a_preprinted_form(
        session: AsyncSession) -> None:
    operator = await cashier(session)
    served, payment = await paid(session, operator)
    layout_id = await layout(session, PREPRINTED, "预印收据")

    printed = await service.print_receipt(session, payment_id=payment.id, layout_id=layout_id, operator=operator,  # type: ignore[arg-type]
                                          now=NOW + timedelta(minutes=1), font=FONT)

    runs = text_runs(printed.pdf)
    expected = {
        "serial_no": payment.serial_no, "paid_at": "2026-11-20 10:00", "account_no": served.household.account_no,
        "household_name": "王芳", "address": "翠湖小区 3 栋 2 单元 501", "channel": "现金", "purpose": "预存水费",
        "amount_upper": "壹佰贰拾叁元肆角伍分", "amount": "¥123.45", "balance_after": "¥123.45",
        "operator": operator.name, "custom:unit": "城东自来水公司",
    }
    for placement in PREPRINTED["fields"]:
        if placement["key"] == "mark":
            continue
        found = run_at(runs, placement["x"], placement["y"])
        assert found is not None and found.text == expected[placement["key"]], (placement, runs)
    labels = {label for label in CATALOGUE.values() if label} | {"收款单位", "不应打印的标题", "不应打印的页脚"}
    assert not [run for run in runs if any(label in run.text for label in labels)]
    assert len(runs) == len(expected)  # nothing else: no marks on a first print
    assert printed.prints[0].reprint is False and await printed_count(session, payment.id) == 1  # type: ignore[arg-type]


async def test_the_cjk_font_is_embedded_not_left_to_the_reader(session: AsyncSession) -> None:
    operator = await cashier(session)
    _, payment = await paid(session, operator)

    printed = await service.print_receipt(session, payment_id=payment.id, operator=operator, now=NOW, font=FONT)  # type: ignore[arg-type]

    fonts = embedded_fonts(printed.pdf)
    cjk = {name: embedded for name, embedded in fonts.items() if "WenQuanYi" in name or "Micro" in name}
    assert cjk and all(cjk.values()), fonts


async def test_the_default_blank_paper_layout_prints_labels_header_and_values(session: AsyncSession) -> None:
    operator = await cashier(session)
    _, payment = await paid(session, operator)

    printed = await service.print_receipt(session, payment_id=payment.id, operator=operator, now=NOW, font=FONT)  # type: ignore[arg-type]

    texts = [run.text for run in text_runs(printed.pdf)]
    assert printed.layout.is_default and printed.layout.name == "标准收据 (241×93 白纸)"
    assert "自来水费收费收据" in texts
    for label in ("户名：", "户号：", "金额(大写)：", "金额(小写)：", "收款员：", "流水号："):
        assert label in texts
    assert "壹佰贰拾叁元肆角伍分" in texts and "王芳" in texts


async def test_a_reprint_says_bu_da_and_is_counted(session: AsyncSession) -> None:
    operator = await cashier(session)
    _, payment = await paid(session, operator)
    assert payment.id is not None

    first = await service.print_receipt(session, payment_id=payment.id, operator=operator, now=NOW, font=FONT)
    again = await service.print_receipt(session, payment_id=payment.id, operator=operator, now=NOW, font=FONT)

    assert "补打" not in [run.text for run in text_runs(first.pdf)]
    assert "补打" in [run.text for run in text_runs(again.pdf)]
    assert [p.reprint for p in await service.receipt_prints(session, payment_id=payment.id)] == [False, True]
    assert await printed_count(session, payment.id) == 2


async def test_a_reversed_payment_prints_marked_reversed(session: AsyncSession) -> None:
    operator = await cashier(session)
    _, payment = await paid(session, operator)
    assert payment.id is not None
    await reverse_payment(session, payment_id=payment.id, reason="收错户", operator=operator, now=NOW)

    printed = await service.print_receipt(session, payment_id=payment.id, operator=operator, now=NOW, font=FONT)

    assert "已冲正" in [run.text for run in text_runs(printed.pdf)]


async def test_a_mark_is_printed_in_the_corner_when_the_layout_has_no_place_for_it(session: AsyncSession) -> None:
    operator = await cashier(session)
    _, payment = await paid(session, operator)
    assert payment.id is not None
    spec = {**PREPRINTED, "fields": [f for f in PREPRINTED["fields"] if f["key"] != "mark"]}
    layout_id = await layout(session, spec, "无标记位")

    await service.print_receipt(session, payment_id=payment.id, layout_id=layout_id, operator=operator, now=NOW,
                                font=FONT)
    again = await service.print_receipt(session, payment_id=payment.id, layout_id=layout_id, operator=operator,
                                        now=NOW, font=FONT)

    assert "补打" in [run.text for run in text_runs(again.pdf)]


async def test_a_batch_is_one_page_per_payment_in_the_order_given(session: AsyncSession) -> None:
    operator = await cashier(session)
    made = [await paid(session, operator, fen) for fen in (100, 205, 1_000_007)]
    ids = [payment.id for _, payment in reversed(made)]

    printed = await service.print_receipts(session, payment_ids=ids, operator=operator, now=NOW, font=FONT)  # type: ignore[arg-type]

    assert pages(printed.pdf) == 3
    assert [p.payment_id for p in printed.prints] == ids
    firsts = [{run.text for run in text_runs(printed.pdf, page)} for page in range(3)]
    assert "壹万元零柒分" in firsts[0] and "贰元零伍分" in firsts[1] and "壹元整" in firsts[2]


# --------------------------------------------------------------------------- numbered forms

NUMBERED = {**PREPRINTED, "numbered": True, "fields": [*PREPRINTED["fields"], {"key": "form_no", "x": 200, "y": 30}]}


async def test_numbered_forms_are_spent_in_order_and_reprints_take_a_form_too(session: AsyncSession) -> None:
    operator = await cashier(session)
    assert operator.id is not None
    layout_id = await layout(session, NUMBERED, "编号收据")
    await forms.issue_forms(session, operator_id=operator.id, prefix="A", first_no=101, last_no=104, digits=7,
                            issued_by="票据管理员", now=NOW)
    _, one = await paid(session, operator, 100)
    _, two = await paid(session, operator, 200)

    batch = await service.print_receipts(session, payment_ids=[one.id, two.id], layout_id=layout_id,  # type: ignore[list-item]
                                         operator=operator, now=NOW, font=FONT)
    reprint = await service.print_receipt(session, payment_id=one.id, layout_id=layout_id, operator=operator,  # type: ignore[arg-type]
                                          now=NOW, font=FONT)

    assert [p.form_no for p in batch.prints] == ["A0000101", "A0000102"]
    assert reprint.prints[0].form_no == "A0000103" and reprint.prints[0].reprint
    assert run_at(text_runs(batch.pdf, 1), 200, 30).text == "A0000102"  # type: ignore[union-attr]
    [stock] = await forms.form_stock(session, operator_id=operator.id)
    assert (stock.issued, stock.used, stock.voided, stock.left, stock.next_form_no) == (4, 3, 0, 1, "A0000104")


@pytest.mark.parametrize(("form_no", "code"), [
    ("A0000101", ErrorCode.RECEIPT_FORM_USED),
    ("A0000102", ErrorCode.RECEIPT_FORM_VOID),
    ("B0000103", ErrorCode.RECEIPT_FORM_NOT_IN_STOCK),
    ("A0000999", ErrorCode.RECEIPT_FORM_NOT_IN_STOCK),
    ("X0000001", ErrorCode.RECEIPT_FORM_NOT_IN_STOCK),  # another cashier's
])
async def test_a_used_voided_or_foreign_form_is_refused_and_nothing_is_written(
        session: AsyncSession, form_no: str, code: ErrorCode) -> None:
    operator, other = await cashier(session), await cashier(session)
    assert operator.id is not None and other.id is not None
    layout_id = await layout(session, NUMBERED, "编号收据")
    await forms.issue_forms(session, operator_id=operator.id, prefix="A", first_no=101, last_no=103, digits=7,
                            issued_by="票据管理员", now=NOW)
    await forms.issue_forms(session, operator_id=other.id, prefix="X", first_no=1, last_no=5, digits=7,
                            issued_by="票据管理员", now=NOW)
    _, payment = await paid(session, operator)
    assert payment.id is not None
    await service.print_receipt(session, payment_id=payment.id, layout_id=layout_id, operator=operator, now=NOW,
                                font=FONT)  # takes A0000101
    await forms.void_form(session, form_no="A0000102", reason="卡纸", operator_id=operator.id, voided_by="收费员",
                          now=NOW)
    before = (await prints_count(session), await printed_count(session, payment.id))

    with pytest.raises(DomainError) as refused:
        await service.print_receipt(session, payment_id=payment.id, layout_id=layout_id, operator=operator, now=NOW,
                                    font=FONT, form_no=form_no)

    assert (refused.value.code, refused.value.field) == (code, "formNo")
    assert (await prints_count(session), await printed_count(session, payment.id)) == before


async def test_a_batch_that_runs_out_of_forms_writes_nothing(session: AsyncSession) -> None:
    operator = await cashier(session)
    assert operator.id is not None
    layout_id = await layout(session, NUMBERED, "编号收据")
    await forms.issue_forms(session, operator_id=operator.id, prefix="C", first_no=1, last_no=2, digits=None,
                            issued_by="票据管理员", now=NOW)
    made = [await paid(session, operator, fen) for fen in (100, 200, 300)]
    before = await prints_count(session)

    with pytest.raises(DomainError) as refused:
        await service.print_receipts(session, payment_ids=[p.id for _, p in made], layout_id=layout_id,  # type: ignore[misc]
                                     operator=operator, now=NOW, font=FONT)

    assert refused.value.code is ErrorCode.RECEIPT_FORMS_EXHAUSTED
    assert await prints_count(session) == before
    assert [await printed_count(session, p.id) for _, p in made] == [0, 0, 0]  # type: ignore[arg-type]


async def test_voiding_counts_in_the_stock_and_twice_is_refused(session: AsyncSession) -> None:
    operator = await cashier(session)
    assert operator.id is not None
    await forms.issue_forms(session, operator_id=operator.id, prefix="D", first_no=1, last_no=10, digits=4,
                            issued_by="票据管理员", now=NOW)

    await forms.void_form(session, form_no="D0001", reason="填错", operator_id=operator.id, voided_by="收费员", now=NOW)
    with pytest.raises(DomainError) as twice:
        await forms.void_form(session, form_no="D0001", reason="填错", operator_id=operator.id, voided_by="收费员",
                              now=NOW)

    assert twice.value.code is ErrorCode.RECEIPT_FORM_VOID
    [stock] = await forms.form_stock(session, operator_id=operator.id)
    assert (stock.issued, stock.used, stock.voided, stock.left, stock.next_form_no) == (10, 0, 1, 9, "D0002")


async def test_an_overlapping_issue_is_refused(session: AsyncSession) -> None:
    operator = await cashier(session)
    assert operator.id is not None
    await forms.issue_forms(session, operator_id=operator.id, prefix="E", first_no=1, last_no=100, digits=None,
                            issued_by="票据管理员", now=NOW)

    with pytest.raises(DomainError) as refused:
        await forms.issue_forms(session, operator_id=operator.id, prefix="E", first_no=100, last_no=150, digits=None,
                                issued_by="票据管理员", now=NOW)

    assert refused.value.code is ErrorCode.RECEIPT_FORMS_OVERLAP


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(("change", "field"), [
    ({"fields": [{"key": "phone", "x": 10, "y": 10}]}, "fields[0].key"),
    ({"fields": [{"key": "amount", "x": 250, "y": 10}]}, "fields[0].x"),
    ({"fields": [{"key": "amount", "x": 10, "y": 94}]}, "fields[0].y"),
    ({"fields": [{"key": "amount", "x": 10, "y": 10, "font_size": 72}]}, "fields[0].font_size"),
    ({"fields": [{"key": "amount", "x": 10, "y": 10, "text": "x"}]}, "fields[0].text"),
    ({"paper": "B5"}, "paper"),
    ({"paper": None, "width": 20, "height": 93}, "width"),
    ({"margins": {"top": 50, "bottom": 50}}, "margins"),
])
async def test_a_bad_layout_is_refused_and_nothing_is_written(session: AsyncSession, change: dict[str, Any],
                                                              field: str) -> None:
    count = (await session.execute(select(func.count()).select_from(ReceiptLayout))).scalar_one()

    with pytest.raises(DomainError) as refused:
        await layout(session, {**PREPRINTED, **change}, "坏格式")

    assert (refused.value.code, refused.value.field) == (ErrorCode.RECEIPT_LAYOUT_INVALID, field)
    assert (await session.execute(select(func.count()).select_from(ReceiptLayout))).scalar_one() == count


async def test_a_missing_font_is_a_typed_refusal_before_anything_is_written(session: AsyncSession) -> None:
    operator = await cashier(session)
    _, payment = await paid(session, operator)
    assert payment.id is not None

    with pytest.raises(DomainError) as refused:
        await service.print_receipt(session, payment_id=payment.id, operator=operator, now=NOW,
                                    font=ReceiptFont(FONT.path.with_name("no-such-font.ttc")))

    assert refused.value.code is ErrorCode.RECEIPT_FONT_MISSING
    assert await printed_count(session, payment.id) == 0
