"""Sending what :func:`backend.notifications.service.notify_many` queued: the push job and
the SMS job (docs/notifications.md). Both run in the job worker, after the business
transaction committed: every minute (cron) and at once when this domain's handler of
``message.created`` defers them.

Each delivery is sent in a transaction of its own that holds its row locked
(``FOR UPDATE SKIP LOCKED``) while the gateway is called, so two workers never send one
delivery and a delivery is marked as it ends: never sent twice.

- **Push**: one JPush call per ``push_deliveries`` row (≤ 1000 registration ids). A 4xx
  (400 bad payload, 401 bad credentials) is ``failed`` at once with JPush's reason: a
  retry would fail alike. A 5xx, a lost connection or a timeout is retried after
  :data:`PUSH_RETRY`'s backoff (30 s, 1 min, 2 min, … up to 1 h), ``failed`` after the
  last attempt. A timeout after the request went out is retried too: JPush may show a
  push twice then, which is better than a balance alert never shown.
- **SMS**: to the household's registered phone as it is when sent, through auth's SMS
  sender (``SHUIWU_SMS_SENDER``; ``log`` writes it to the log). At most
  ``SHUIWU_NOTIFICATIONS_SMS_DAILY_CAP`` sent per household per day of the utility's
  zone (counted under a per-household advisory lock), the rest ``capped``. A refusal is
  ``failed`` with the vendor's reason; a failure where nothing was sent
  (busy, no connection) is retried with backoff; an outcome unknown (a timeout after the
  request went out) is kept as ``sent`` with that reason, never sent again. Notification
  SMS do not spend the installation's login-code cap (``SHUIWU_SMS_DAILY_CAP``): the
  per-household cap bounds them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import transaction
from backend.errors import DomainError
from backend.gateways.errors import GatewayError
from backend.gateways.retry import RetryPolicy
from backend.notifications.jpush import push_payload, send_push
from backend.notifications.settings import JPushSettings, NotificationsSettings

if TYPE_CHECKING:
    from backend.events.service import Event
    from backend.runtime import Runtime

log = logging.getLogger("shuiwu.notifications")

PUSH_RETRY = RetryPolicy(max_attempts=6, first_delay=timedelta(seconds=30), max_delay=timedelta(hours=1))
SMS_RETRY = RetryPolicy(max_attempts=4, first_delay=timedelta(minutes=1), max_delay=timedelta(hours=1))
# Deliveries one run sends at most (the next run, a minute later, takes the rest).
RUN_LIMIT = 500

_NEXT_PUSH = text(
    """
    SELECT id, title, body, extras, registration_ids, attempts FROM push_deliveries
    WHERE state = 'queued' AND next_attempt_at <= :now
    ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED
    """)


def _reason(error: GatewayError) -> str:
    answer = error.answer if isinstance(error.answer, Mapping) else {}
    if answer.get("status") is not None:
        return f"{answer.get('status')} {answer.get('code') or ''} {answer.get('message') or ''}".strip()[:300]
    return f"{error.code}: {error.detail or error.message_en}"[:300]


async def send_pushes(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """The push job: send the due queued pushes; return how many calls succeeded."""
    client = runtime.service("gateway.jpush")
    settings: JPushSettings = client.settings
    sent = 0
    for _ in range(RUN_LIMIT):
        async with transaction(runtime.sessions) as session:
            now = runtime.now()
            row = (await session.execute(_NEXT_PUSH, {"now": now})).one_or_none()
            if row is None:
                break
            body = push_payload(registration_ids=row.registration_ids, title=row.title, body=row.body,
                                extras=row.extras, apns_production=settings.apns_production)
            attempt = row.attempts + 1
            try:
                answer = await client.call("push", send_push, settings, body, request=body, reference=str(row.id))
            except GatewayError as error:
                retry = error.retryable and attempt < PUSH_RETRY.max_attempts
                await session.execute(text(
                    """
                    UPDATE push_deliveries SET attempts = :attempt, reason = :reason,
                           state = CASE WHEN :retry THEN 'queued' ELSE 'failed' END, next_attempt_at = :next
                    WHERE id = :id
                    """), {"attempt": attempt, "reason": _reason(error), "retry": retry, "id": row.id,
                           "next": now + PUSH_RETRY.delay_after(attempt) if retry else now})
                continue
            await session.execute(text(
                "UPDATE push_deliveries SET state = 'sent', attempts = :attempt, msg_id = :msg, sent_at = :now, "
                "reason = NULL WHERE id = :id"),
                {"attempt": attempt, "msg": str(answer.get("msg_id", "")), "now": runtime.now(), "id": row.id})
            sent += 1
    return sent


_NEXT_SMS = text(
    """
    SELECT s.id, s.household_id, s.text, s.attempts, h.phone FROM sms_deliveries s
    JOIN households h ON h.id = s.household_id
    WHERE s.state = 'queued' AND s.next_attempt_at <= :now
    ORDER BY s.next_attempt_at, s.id LIMIT 1 FOR UPDATE OF s SKIP LOCKED
    """)
_SENT_TODAY = text(
    """
    SELECT count(*) FROM sms_deliveries
    WHERE household_id = :household AND state = 'sent' AND sent_at >= :day_start
    """)


def _day_start(now: datetime, runtime: Runtime) -> datetime:
    local = now.astimezone(runtime.tz)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


async def _finish_sms(session: AsyncSession, delivery_id: int, *, state: str, reason: str | None, attempt: int,
                      phone: str | None, now: datetime, next_at: datetime | None = None) -> None:
    await session.execute(text(
        """
        UPDATE sms_deliveries SET state = :state, reason = :reason, attempts = :attempt, phone = :phone,
               sent_at = CASE WHEN :is_sent THEN CAST(:now AS timestamptz) ELSE sent_at END,
               next_attempt_at = coalesce(CAST(:next AS timestamptz), next_attempt_at)
        WHERE id = :id
        """), {"state": state, "is_sent": state == "sent",
               "reason": reason, "attempt": attempt, "phone": phone, "now": now, "next": next_at,
               "id": delivery_id})


async def send_sms(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """The SMS job: send the due queued SMS (module docstring); return how many were sent."""
    from backend.auth.sms.senders import sender_for

    settings: NotificationsSettings = runtime.settings_group("notifications")
    sender: Any = sender_for(runtime.services)  # both senders have send_text (notifications only)
    sent = 0
    for _ in range(RUN_LIMIT):
        async with transaction(runtime.sessions) as session:
            now = runtime.now()
            row = (await session.execute(_NEXT_SMS, {"now": now})).one_or_none()
            if row is None:
                break
            attempt = row.attempts + 1
            if not row.phone:
                await _finish_sms(session, row.id, state="failed", reason="户号未登记手机号 (no registered phone)",
                                  attempt=attempt, phone=None, now=now)
                continue
            await session.execute(text("SELECT pg_advisory_xact_lock(:space, :household)"),
                                  {"space": 0x534D53, "household": row.household_id})
            today = (await session.execute(_SENT_TODAY, {"household": row.household_id,
                                                         "day_start": _day_start(now, runtime)})).scalar_one()
            if today >= settings.sms_daily_cap:
                await _finish_sms(session, row.id, state="capped", attempt=attempt, phone=row.phone, now=now,
                                  reason=f"已达每户每日短信上限 {settings.sms_daily_cap} 条 (daily cap)")
                continue
            try:
                await sender.send_text(row.phone, settings.sms_template, row.text)
            except GatewayError as error:
                if error.maybe_done:
                    await _finish_sms(session, row.id, state="sent", attempt=attempt, phone=row.phone, now=now,
                                      reason=f"outcome unknown: {_reason(error)}"[:300])
                    sent += 1
                    continue
                retry = error.retryable and attempt < SMS_RETRY.max_attempts
                await _finish_sms(session, row.id, state="queued" if retry else "failed", reason=_reason(error),
                                  attempt=attempt, phone=row.phone, now=now,
                                  next_at=now + SMS_RETRY.delay_after(attempt) if retry else None)
                continue
            except (DomainError, ValueError) as error:  # the vendor's refusal (auth's SmsRejected), no template
                code = getattr(error, "code", type(error).__name__)
                await _finish_sms(session, row.id, state="failed", attempt=attempt, phone=row.phone, now=now,
                                  reason=f"{code}: {error}"[:300])
                log.warning("SMS delivery %d failed: %s", row.id, error)
                continue
            await _finish_sms(session, row.id, state="sent", reason=None, attempt=attempt, phone=row.phone, now=now)
            sent += 1
    return sent


async def wake_senders(runtime: Runtime, session: AsyncSession, event: Event) -> None:
    """message.created: run the push and SMS jobs now (after this commit), not at the next minute."""
    await runtime.defer(session, job="notifications.push", dedupe_key=f"event:{event.id}")
    await runtime.defer(session, job="notifications.sms", dedupe_key=f"event:{event.id}")
