"""The webhooks layer's declaration (事件推送): endpoints of API clients, deliveries driven
by the ``domain_events`` outbox, the send job and the 事件推送 menu.

A shared layer placed right after ``events``: it imports no business domain (each kind's
scope narrowing reads the owners' tables in SQL, ``backend.webhooks.kinds``). It declares
the fan-out handler for the subscribable kinds whose payloads exist before it runs;
``workorder.changed`` is declared by the workorders domain (one line, the same handler):
``Handler("workorder.changed", "webhooks.fanout", "backend.webhooks.service:fan_out", horizon=EFFECT_HORIZON)``.

Permissions: ``webhooks:read`` (an API client scope: a client holding it registers and
manages **its own** endpoints and reads their deliveries; staff read those of clients in
their scope) and ``webhooks:manage`` (staff: manage any client's endpoints in scope and
replay deliveries).
"""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Domain, Job, PersonalData
from backend.events.service import EFFECT_HORIZON, Handler
from backend.webhooks.settings import WebhookSettings

_FAN_OUT = "backend.webhooks.service:fan_out"

DOMAIN = Domain(
    name="webhooks",
    title="事件推送",
    models=("backend.webhooks.models",),
    schema="backend.webhooks.schema",
    settings=WebhookSettings,
    # The demo's receivers are local: SHUIWU_WEBHOOK_ALLOW_PRIVATE=true for `shuiwu demo run`.
    demo_environment="backend.webhooks.demo:environment",
    menus=(
        Menu("webhooks", "事件推送", "Webhooks", (
            _p("webhooks:read", "查看事件推送 (第三方: 维护本方推送地址)", "View webhooks (a client: maintain its own)"),
            _p("webhooks:manage", "维护第三方推送地址 / 重放推送", "Maintain clients' webhooks and replay deliveries"),
        )),
    ),
    operations=(
        Operation("createWebhookEndpoint", "新增推送地址", "Create webhook endpoint", "webhooks"),
        Operation("updateWebhookEndpoint", "修改推送地址", "Update webhook endpoint", "webhooks"),
        Operation("rotateWebhookSecret", "重置推送密钥", "Rotate webhook secret", "webhooks"),
        Operation("deleteWebhookEndpoint", "删除推送地址", "Delete webhook endpoint", "webhooks"),
        Operation("replayWebhookDelivery", "重放推送", "Replay webhook delivery", "webhooks"),
    ),
    handlers=tuple(
        Handler(kind, "webhooks.fanout", _FAN_OUT, horizon=EFFECT_HORIZON)
        for kind in ("readings.ingested", "payment.succeeded", "bill.issued", "alarm.opened")
    ),
    jobs=(
        Job("webhooks.deliver", "backend.webhooks.service:deliver",
            description="One attempt of a webhook delivery (deferred by the fan-out and by retries)"),
    ),
    personal_data=PersonalData(excluded={
        "webhook_deliveries.body": "the event's payload narrowed to the client's scope: ids, states and amounts only",
        "webhook_attempts.response_excerpt": "the first bytes of a third party's answer",
    }),
)
