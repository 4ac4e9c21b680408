"""Numbered pre-printed forms (票据领用 / 核销): each cashier's stock of form numbers.

A **batch** is a range of forms issued to one cashier (``prefix`` + ``first_no`` …
``last_no``, zero-padded to ``digits``: ``A0000101``). A print on a numbered layout takes
the cashier's next number, as a cashier tears the next sheet off a pad: in the first
batch (in the order they were issued) with a number after its highest printed one, that
number, skipping voided ones (a jammed sheet). Or it takes the number
the cashier names, which must be in their own stock (RECEIPT_FORM_NOT_IN_STOCK), not
printed on before (RECEIPT_FORM_USED) and not voided (RECEIPT_FORM_VOID). A spoiled
form is voided with a reason (作废); a voided number is never printed on.

Taking a number locks the cashier's batches (primary-key order), so two prints by one
cashier at the same moment take two numbers; the unique indexes on the prints and the
voids make a number spent once whatever happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.errors import DomainError, ErrorCode
from backend.payments.receipts import errors
from backend.payments.receipts.models import ReceiptFormBatch, ReceiptFormVoid

MAX_BATCH = 100_000  # forms in one issue: a box is a few hundred; a typo of three zeros is refused
PREFIX_LIMIT = 20
VOID_RUN = 100  # voided forms in a row the next-number search steps over one by one (a spoiled pad is 50)


@dataclass(frozen=True, slots=True)
class FormNumber:
    """One form: its batch, its number in the batch's range and what is printed (票号)."""

    batch_id: int
    number: int
    form_no: str


def format_form_no(batch: ReceiptFormBatch, number: int) -> str:
    return f"{batch.prefix}{number:0{batch.digits}d}"


async def issue_forms(session: AsyncSession, *, operator_id: int, prefix: str, first_no: int, last_no: int,
                      digits: int | None, issued_by: str, now: datetime, note: str = "") -> ReceiptFormBatch:
    """票据领用: issue forms ``prefix`` + ``first_no`` … ``last_no`` to ``operator_id``.
    A range overlapping one issued before with the same prefix is RECEIPT_FORMS_OVERLAP."""
    prefix = prefix.strip()
    if len(prefix) > PREFIX_LIMIT or any(ch.isdigit() for ch in prefix[-1:]):
        # A prefix ending in a digit would make A1 + 0001 read as A10001.
        raise DomainError(f"票号前缀最多 {PREFIX_LIMIT} 个字符, 且不能以数字结尾",
                          f"A prefix is at most {PREFIX_LIMIT} characters and does not end in a digit",
                          field="prefix", code=ErrorCode.INVALID)
    if first_no < 0 or last_no < first_no or last_no - first_no + 1 > MAX_BATCH:
        raise DomainError(f"号段无效: 起始号不大于终止号, 每次最多 {MAX_BATCH} 份",
                          f"Bad range: the first number is at most the last, at most {MAX_BATCH} forms at once",
                          field="lastNo", code=ErrorCode.INVALID)
    width = digits if digits is not None else len(str(last_no))
    if not len(str(last_no)) <= width <= 18:
        raise DomainError("票号位数须能容纳终止号, 最多 18 位", "The digits must hold the last number, 18 at most",
                          field="digits", code=ErrorCode.INVALID)
    if len(note) > 200:
        raise DomainError("备注不能超过 200 个字符", "A note is at most 200 characters", field="note",
                          code=ErrorCode.TOO_LONG)
    if (await session.execute(text("SELECT 1 FROM staff_users WHERE id = :id"), {"id": operator_id})).first() is None:
        raise DomainError("领用人不存在", "No such cashier", field="operatorId", code=ErrorCode.NOT_FOUND)
    # Serialise issues: an overlap check and the insert of two concurrent issues must not interleave.
    await session.execute(text("LOCK TABLE receipt_form_batches IN SHARE ROW EXCLUSIVE MODE"))
    overlap = (await session.execute(text(
        "SELECT 1 FROM receipt_form_batches WHERE prefix = :prefix AND first_no <= :last AND last_no >= :first LIMIT 1"),
        {"prefix": prefix, "first": first_no, "last": last_no})).first()
    if overlap is not None:
        raise errors.ReceiptFormsOverlap(field="firstNo")
    batch = ReceiptFormBatch(prefix=prefix, first_no=first_no, last_no=last_no, digits=width, operator_id=operator_id,
                             issued_by=issued_by[:100], issued_at=now, note=note.strip())
    session.add(batch)
    await session.flush()
    return batch


async def _lock_batches(session: AsyncSession, operator_id: int) -> list[ReceiptFormBatch]:
    return list((await session.execute(
        select(ReceiptFormBatch).where(col(ReceiptFormBatch.operator_id) == operator_id)
        .order_by(col(ReceiptFormBatch.id)).with_for_update())).scalars())


def _parse(batches: Sequence[ReceiptFormBatch], form_no: str) -> FormNumber | None:
    """The form ``form_no`` names among ``batches``, if any."""
    form_no = form_no.strip()
    for batch in batches:
        assert batch.id is not None
        rest = form_no[len(batch.prefix):]
        if form_no.startswith(batch.prefix) and rest.isascii() and rest.isdigit() and len(rest) == batch.digits:
            number = int(rest)
            if batch.first_no <= number <= batch.last_no:
                return FormNumber(batch.id, number, format_form_no(batch, number))
    return None


async def _spent(session: AsyncSession, form: FormNumber) -> str | None:
    """"void", "used" or None for an unspent form."""
    row = (await session.execute(text(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM receipt_form_voids WHERE form_batch_id = :b AND form_number = :n) "
        "THEN 'void' WHEN EXISTS (SELECT 1 FROM receipt_prints WHERE form_batch_id = :b AND form_number = :n) "
        "THEN 'used' END"), {"b": form.batch_id, "n": form.number})).scalar_one()
    return str(row) if row is not None else None


async def _next_unused(session: AsyncSession, batch: ReceiptFormBatch) -> int | None:
    """The number of ``batch`` the next print takes: the first one after the highest printed
    (``first_no`` when none is) that is not voided; None when that is past ``last_no``.

    A few index probes on ``(form_batch_id, form_number)``, so a nearly spent batch of
    :data:`MAX_BATCH` forms costs what a fresh one does: the max print, then the voids
    from there, at most :data:`VOID_RUN` of them; after a longer run of voided forms it
    goes on after the highest voided one. A number skipped below (a print that named a
    later ``formNo``, or a gap inside such a run) stays in stock, counted as left: it is
    printed by naming it, or voided."""
    start = (await session.execute(text(
        "SELECT max(form_number) + 1 FROM receipt_prints WHERE form_batch_id = :b"), {"b": batch.id})).scalar_one()
    number = int(start) if start is not None else batch.first_no
    # The voids from there in order, one index range scan: the first number they skip is free.
    voided = (await session.execute(text(
        "SELECT form_number FROM receipt_form_voids WHERE form_batch_id = :b AND form_number >= :n "
        "ORDER BY form_number LIMIT :run"), {"b": batch.id, "n": number, "run": VOID_RUN})).scalars().all()
    run = 0
    for void in voided:
        if void != number + run:
            break
        run += 1
    if run == VOID_RUN:  # a longer run: on after the highest voided form
        number = int((await session.execute(text(
            "SELECT max(form_number) + 1 FROM receipt_form_voids WHERE form_batch_id = :b"), {"b": batch.id})).scalar_one())
    else:
        number += run
    return number if number <= batch.last_no else None


async def take_form(session: AsyncSession, *, operator_id: int, form_no: str | None = None) -> FormNumber:
    """The form a print consumes (module docstring): ``form_no`` checked, or the next one
    of the cashier's stock (:func:`_next_unused`, batches in issue order) (RECEIPT_FORMS_EXHAUSTED when none is left). The
    caller records the print naming it in the same transaction."""
    batches = await _lock_batches(session, operator_id)
    if form_no is not None:
        form = _parse(batches, form_no)
        if form is None:
            raise errors.ReceiptFormNotInStock(field="formNo")
        spent = await _spent(session, form)
        if spent == "void":
            raise errors.ReceiptFormVoid(field="formNo")
        if spent == "used":
            raise errors.ReceiptFormUsed(field="formNo")
        return form
    for batch in batches:
        number = await _next_unused(session, batch)
        if number is not None:
            assert batch.id is not None
            return FormNumber(batch.id, number, format_form_no(batch, number))
    raise errors.ReceiptFormsExhausted(field="formNo")


async def void_form(session: AsyncSession, *, form_no: str, reason: str, operator_id: int | None, voided_by: str,
                    now: datetime, may_manage: bool = False) -> ReceiptFormVoid:
    """作废 the spoiled form ``form_no``: one of the cashier's own, or anyone's with
    ``may_manage`` (RECEIPT_FORM_NOT_IN_STOCK otherwise). A printed form may be voided
    (a misprint); a voided one is RECEIPT_FORM_VOID."""
    reason = reason.strip()
    if not reason or len(reason) > 200:
        raise DomainError("作废原因须为 1 至 200 个字符", "A reason is 1 to 200 characters", field="reason",
                          code=ErrorCode.REQUIRED if not reason else ErrorCode.TOO_LONG)
    query = select(ReceiptFormBatch).order_by(col(ReceiptFormBatch.id)).with_for_update()
    if not may_manage:
        query = query.where(col(ReceiptFormBatch.operator_id) == operator_id)
    form = _parse(list((await session.execute(query)).scalars()), form_no)
    if form is None:
        raise errors.ReceiptFormNotInStock(field="formNo")
    if await _spent(session, form) == "void":
        raise errors.ReceiptFormVoid(field="formNo")
    void = ReceiptFormVoid(form_batch_id=form.batch_id, form_number=form.number, form_no=form.form_no, reason=reason,
                           voided_by=voided_by[:100], voided_at=now)
    session.add(void)
    await session.flush()
    return void


@dataclass(frozen=True, slots=True)
class FormStock:
    """One cashier's forms (票据核销): issued, printed on, voided and left."""

    operator_id: int
    operator_name: str
    issued: int
    used: int
    voided: int
    left: int
    next_form_no: str | None


async def form_stock(session: AsyncSession, *, operator_id: int | None = None) -> list[FormStock]:
    """Each cashier's stock (or ``operator_id``'s): a voided form counts as voided even
    when it was printed on first, so issued = used + voided + left. A print row is one
    form (unique per batch and number), so ``used`` counts rows: the same number in two
    batches (RA0000101, RB0000101) is two forms."""
    rows = (await session.execute(text(
        "WITH spent AS ("
        "  SELECT b.operator_id, count(*) FILTER (WHERE v.id IS NULL) AS used,"
        "         0 AS voided"
        "  FROM receipt_form_batches b JOIN receipt_prints p ON p.form_batch_id = b.id"
        "  LEFT JOIN receipt_form_voids v ON v.form_batch_id = b.id AND v.form_number = p.form_number"
        "  GROUP BY b.operator_id"
        "  UNION ALL"
        "  SELECT b.operator_id, 0, count(*) FROM receipt_form_batches b"
        "  JOIN receipt_form_voids v ON v.form_batch_id = b.id GROUP BY b.operator_id"
        "), issued AS ("
        "  SELECT operator_id, sum(last_no - first_no + 1) AS issued FROM receipt_form_batches GROUP BY operator_id"
        ") "
        "SELECT i.operator_id, u.full_name, i.issued, coalesce(sum(s.used), 0), coalesce(sum(s.voided), 0) "
        "FROM issued i JOIN staff_users u ON u.id = i.operator_id LEFT JOIN spent s ON s.operator_id = i.operator_id "
        "WHERE CAST(:operator AS bigint) IS NULL OR i.operator_id = :operator "
        "GROUP BY i.operator_id, u.full_name, i.issued ORDER BY i.operator_id"), {"operator": operator_id})).all()
    stock = []
    for operator, name, issued, used, voided in rows:
        left = int(issued) - int(used) - int(voided)
        stock.append(FormStock(int(operator), str(name), int(issued), int(used), int(voided), left,
                               await _peek(session, int(operator)) if left else None))
    return stock


async def _peek(session: AsyncSession, operator_id: int) -> str | None:
    """The number the cashier's next print takes, without locking anything."""
    batches = list((await session.execute(select(ReceiptFormBatch).where(
        col(ReceiptFormBatch.operator_id) == operator_id).order_by(col(ReceiptFormBatch.id)))).scalars())
    for batch in batches:
        number = await _next_unused(session, batch)
        if number is not None:
            return format_form_no(batch, number)
    return None
