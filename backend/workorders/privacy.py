"""What work orders hold about a resident, for ``shuiwu privacy export|erase``
(docs/privacy.md).

The subject's orders are those whose contact phone is theirs, or that they made as a
resident signed in with that phone. The export holds each order's report (category,
description, contact, appointment), its result, their rating and comment, and the keys
of the photos they uploaded.

Erasure replaces the contact name by the pseudonym, clears the contact phone, the
description and the comment (the order, its category, dates and rating stay for the
utility's statistics), deletes the rows of the photos the resident uploaded and lets
those files expire now: the hourly purge deletes their bytes (``purge_expired_files``).
A second run changes nothing.
"""

from __future__ import annotations

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.privacy import changed_rows, rows_of
from backend.domain import DataSubject, PersonalSection

_THEIRS = """
    SELECT w.id FROM work_orders w
    WHERE w.contact_phone = :phone
       OR (w.created_by_kind = 'resident' AND w.created_by_id IN (SELECT id FROM residents WHERE phone = :phone))
"""
_ORDERS = text(f"""
    SELECT w.number, w.category, w.description, w.contact_name, w.contact_phone, w.appointment_at, w.state, w.result,
           w.rating, w.rating_comment, w.created_at, w.resolved_at
    FROM work_orders w WHERE w.id IN ({_THEIRS}) ORDER BY w.id
""")
_PHOTOS = text(f"""
    SELECT w.number, p.stage, p.file_key, p.created_at
    FROM work_order_photos p JOIN work_orders w ON w.id = p.work_order_id
    WHERE p.work_order_id IN ({_THEIRS}) AND p.uploaded_by_kind = 'resident' ORDER BY p.id
""")
_ERASE_ORDERS = text(f"""
    UPDATE work_orders SET contact_name = :pseudonym, contact_phone = '', description = '', rating_comment = NULL
    WHERE id IN ({_THEIRS}) AND (contact_name <> :pseudonym OR contact_phone <> '' OR description <> ''
                                 OR rating_comment IS NOT NULL)
""")
_ERASE_PHOTOS = text(f"""
    WITH gone AS (
        DELETE FROM work_order_photos WHERE work_order_id IN ({_THEIRS}) AND uploaded_by_kind = 'resident'
        RETURNING file_key, thumbnail_key
    ), expired AS (
        UPDATE stored_files SET expires_at = :now
        WHERE key IN (SELECT file_key FROM gone UNION ALL SELECT thumbnail_key FROM gone)
    )
    SELECT count(*) FROM gone
""").bindparams(bindparam("now"))


async def export(session: AsyncSession, subject: DataSubject) -> list[PersonalSection]:
    orders = rows_of(await session.execute(_ORDERS, {"phone": subject.phone}))
    photos = rows_of(await session.execute(_PHOTOS, {"phone": subject.phone}))
    return [
        PersonalSection("work_orders", "本人的报修工单 (描述、联系人、评价)", orders,
                        names=frozenset(row["contact_name"] for row in orders if row["contact_name"])),
        PersonalSection("work_order_photos", "本人上传的报修照片", photos),
    ]


async def erase(session: AsyncSession, subject: DataSubject) -> dict[str, int]:
    # The phone is the one key to the orders: erase the photos while it still finds them.
    photos = int((await session.execute(_ERASE_PHOTOS, {"phone": subject.phone, "now": subject.now})).scalar_one())
    orders = await session.execute(_ERASE_ORDERS, {"phone": subject.phone, "pseudonym": subject.pseudonym})
    return {"work_orders": changed_rows(orders), "work_order_photos": photos}
