"""Receipts, the review's findings: the stock counts the same number in two batches as two
forms; taking the next form of a huge, nearly spent batch costs what a fresh one does;
listing the layouts writes nothing; a print does not wait for another one's render."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.payments.receipts import forms, render, service
from backend.payments.receipts.layout import DEFAULT_LAYOUT, DEFAULT_LAYOUT_NAME, parse_layout
from backend.payments.receipts.models import ReceiptLayout
from backend.payments.receipts.render import ReceiptContent, ReceiptFont
from tests.payments.test_receipts import FONT, NOW, NUMBERED, cashier, layout, paid


async def test_the_same_number_in_two_batches_is_two_forms_in_the_stock(session: AsyncSession) -> None:
    operator = await cashier(session)
    assert operator.id is not None
    layout_id = await layout(session, NUMBERED, "编号收据")
    for prefix in ("RA", "RB"):
        await forms.issue_forms(session, operator_id=operator.id, prefix=prefix, first_no=101, last_no=110, digits=7,
                                issued_by="票据管理员", now=NOW)
    served, one = await paid(session, operator, 100)
    _, two = await paid(session, operator, 200, served=served)
    for payment, form_no in ((one, "RA0000101"), (two, "RB0000101")):
        await service.print_receipt(session, payment_id=payment.id, layout_id=layout_id, operator=operator,  # type: ignore[arg-type]
                                    now=NOW, font=FONT, form_no=form_no)

    [stock] = await forms.form_stock(session, operator_id=operator.id)

    assert (stock.issued, stock.used, stock.voided, stock.left, stock.next_form_no) == (20, 2, 0, 18, "RA0000102")


async def test_the_next_form_follows_the_highest_printed_and_skips_voided_ones(session: AsyncSession) -> None:
    operator = await cashier(session)
    assert operator.id is not None
    layout_id = await layout(session, NUMBERED, "编号收据")
    await forms.issue_forms(session, operator_id=operator.id, prefix="E", first_no=1, last_no=6, digits=2,
                            issued_by="票据管理员", now=NOW)
    await forms.issue_forms(session, operator_id=operator.id, prefix="F", first_no=1, last_no=3, digits=2,
                            issued_by="票据管理员", now=NOW)
    served, one = await paid(session, operator, 100)
    _, two = await paid(session, operator, 200, served=served)
    await service.print_receipt(session, payment_id=one.id, layout_id=layout_id, operator=operator,  # type: ignore[arg-type]
                                now=NOW, font=FONT, form_no="E03")
    for form_no in ("E04", "E05"):
        await forms.void_form(session, form_no=form_no, reason="卡纸", operator_id=operator.id, voided_by="收费员",
                              now=NOW)

    taken = await service.print_receipts(session, payment_ids=[one.id, two.id], layout_id=layout_id,  # type: ignore[list-item]
                                         operator=operator, now=NOW, font=FONT)

    # E01 and E02, below the highest printed, stay in stock: printed by naming them.
    assert [p.form_no for p in taken.prints] == ["E06", "F01"]
    [stock] = await forms.form_stock(session, operator_id=operator.id)
    assert (stock.issued, stock.used, stock.voided, stock.left, stock.next_form_no) == (9, 3, 2, 4, "F02")


async def test_taking_a_form_from_a_huge_nearly_spent_batch_is_cheap(session: AsyncSession) -> None:
    operator = await cashier(session)
    assert operator.id is not None
    _, payment = await paid(session, operator)
    layout_id = await layout(session, NUMBERED, "编号收据")
    spent = await forms.issue_forms(session, operator_id=operator.id, prefix="BIG", first_no=1,
                                    last_no=forms.MAX_BATCH, digits=6, issued_by="票据管理员", now=NOW)
    big = await forms.issue_forms(session, operator_id=operator.id, prefix="BIH", first_no=1,
                                  last_no=forms.MAX_BATCH, digits=6, issued_by="票据管理员", now=NOW)
    for batch, last in ((spent, forms.MAX_BATCH), (big, forms.MAX_BATCH - 10)):
        await session.execute(text(
            "INSERT INTO receipt_prints (payment_id, layout_id, form_batch_id, form_number, form_no, reprint, printed_by,"
            " printed_at) SELECT :p, :l, :b, n, 'X' || n, true, 'x', now() FROM generate_series(1, CAST(:last AS bigint)) n"),
            {"p": payment.id, "l": layout_id, "b": batch.id, "last": last})
    await session.execute(text("ANALYZE receipt_prints"))

    # Cheap means the printed forms are not walked: counted in rows read, not in
    # milliseconds (a timing is noise on a busy machine).
    read = text("SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables "
                "WHERE relname = 'receipt_prints'")
    before = (await session.execute(read)).scalar_one()
    taken = [await forms.take_form(session, operator_id=operator.id) for _ in range(5)]
    rows_read = (await session.execute(read)).scalar_one() - before

    assert {form.form_no for form in taken} == {"BIH099991"}  # nothing recorded: the same form each time
    # A walk over the two batches would read ~200,000 prints at each take.
    assert rows_read < 5 * 1000, f"{rows_read} printed forms read to take 5 forms"


async def test_listing_the_layouts_writes_nothing(session: AsyncSession) -> None:
    await session.execute(text("DELETE FROM receipt_layouts"))

    listed = await service.receipt_layouts(session)

    assert [(row.id, row.name, row.is_default) for row in listed] == [(None, DEFAULT_LAYOUT_NAME, True)]
    assert listed[0].spec == parse_layout(DEFAULT_LAYOUT).to_json()
    assert (await session.execute(select(func.count()).select_from(ReceiptLayout))).scalar_one() == 0


async def test_the_first_print_on_the_default_layout_stores_it(session: AsyncSession) -> None:
    await session.execute(text("DELETE FROM receipt_layouts"))
    operator = await cashier(session)
    _, payment = await paid(session, operator)

    printed = await service.print_receipt(session, payment_id=payment.id, operator=operator, now=NOW, font=FONT)  # type: ignore[arg-type]

    listed = await service.receipt_layouts(session)
    assert [(row.id, row.name, row.is_default) for row in listed] == [(printed.layout.id, DEFAULT_LAYOUT_NAME, True)]
    assert printed.layout.id is not None


def test_a_render_does_not_wait_for_another_ones_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_layout(DEFAULT_LAYOUT)
    render.font_name(FONT)  # registered before the threads start
    drawing, release = threading.Event(), threading.Event()
    draw = render._draw

    def slow_draw(page: Any, *args: Any) -> None:
        if threading.current_thread().name == "slow":
            drawing.set()
            release.wait(10)
        draw(page, *args)

    monkeypatch.setattr(render, "_draw", slow_draw)
    receipt = ReceiptContent({"household_name": "王芳"})
    slow = threading.Thread(target=render.render_receipts, args=(spec, [receipt]), kwargs={"font": FONT}, name="slow")
    slow.start()
    try:
        assert drawing.wait(10)
        done: list[bytes] = []
        quick = threading.Thread(target=lambda: done.append(render.render_receipts(spec, [receipt], font=FONT)))
        quick.start()
        quick.join(5)
        assert done and done[0].startswith(b"%PDF"), "a render waited for another one's whole batch"
    finally:
        release.set()
        slow.join(10)


def test_a_font_registers_once_under_concurrent_renders() -> None:
    font = ReceiptFont(FONT.path, FONT.index)
    names: list[str] = []
    threads = [threading.Thread(target=lambda: names.append(render.font_name(font))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(set(names)) == 1 and len(names) == 4


async def test_taking_a_form_after_a_long_run_of_voided_forms_is_cheap(session: AsyncSession) -> None:
    operator = await cashier(session)
    assert operator.id is not None
    batch = await forms.issue_forms(session, operator_id=operator.id, prefix="V", first_no=1, last_no=forms.MAX_BATCH,
                                    digits=6, issued_by="票据管理员", now=NOW)
    await session.execute(text(
        "INSERT INTO receipt_form_voids (form_batch_id, form_number, form_no, reason, voided_by, voided_at) "
        "SELECT :b, n, 'V' || lpad(n::text, 6, '0'), '卡纸', 'x', now() FROM generate_series(1, 99990) n"),
        {"b": batch.id})
    await session.execute(text("ANALYZE receipt_form_voids"))

    # Cheap means the voided forms are not walked: counted in rows read, not in
    # milliseconds (a timing is noise on a busy machine).
    read = text("SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables "
                "WHERE relname = 'receipt_form_voids'")
    before = (await session.execute(read)).scalar_one()
    taken = [await forms.take_form(session, operator_id=operator.id) for _ in range(5)]
    rows_read = (await session.execute(read)).scalar_one() - before

    assert {form.form_no for form in taken} == {"V099991"}
    # A walk over the run would read its 99,990 voids at each take; a jump reads a window.
    assert rows_read < 5 * 1000, f"{rows_read} voided forms read to take 5 forms"
