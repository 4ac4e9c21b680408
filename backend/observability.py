"""Logs with the request id, and Prometheus metrics (``/metrics``)."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

registry = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "shuiwu_http_requests_total", "HTTP requests by route and status.", ["route", "status"], registry=registry
)
HTTP_LATENCY = Histogram(
    "shuiwu_http_request_seconds", "HTTP request latency by route.", ["route"], registry=registry,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GRAPHQL_OPERATIONS = Counter(
    "shuiwu_graphql_operations_total", "GraphQL operations by name and outcome.", ["operation", "outcome"],
    registry=registry,
)
GRAPHQL_LATENCY = Histogram(
    "shuiwu_graphql_operation_seconds", "GraphQL operation latency by name.", ["operation"], registry=registry,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DB_POOL = Gauge("shuiwu_db_pool_connections", "Database pool connections by state.", ["state"], registry=registry)
JOBS = Counter("shuiwu_jobs_total", "Background jobs run, by entrypoint and outcome.", ["entrypoint", "outcome"], registry=registry)
EVENTS_RELAYED = Counter("shuiwu_events_relayed_total", "Domain events handed to jobs, by kind.", ["kind"], registry=registry)
# Refusals of the cross-process throttles (login attempts, SMS codes), by the kind of key
# ("login:ip", "sms:all" …: fixed by the code, never the address): the operator's view of a
# flood, since only the first refusal of a key in its minute is audited.
THROTTLE_REFUSALS = Counter("shuiwu_throttle_refusals_total", "Throttle refusals by kind of key.", ["throttle"],
                            registry=registry)

# Operation names are client-chosen: the label is the name cut to a length and only
# [A-Za-z0-9_]; anything else, and every name past the cap of distinct labels, is "other",
# so no client can grow the registry (or this process) by sending names. /graphql labels
# by name only the operations it executed for a signed-in caller; everything else has a
# fixed label, outside the cap, so strangers cannot use up the names.
MAX_OPERATION_LABEL_LENGTH = 64
MAX_OPERATION_LABELS = 200
OTHER_OPERATION = "other"
ANONYMOUS_CALLER = "anonymous"  # any request without a valid token
NOT_EXECUTED = "not_executed"  # a signed-in caller's invalid or refused document
UNNAMED_OPERATION = "unnamed"
_FIXED_LABELS = frozenset({OTHER_OPERATION, ANONYMOUS_CALLER, NOT_EXECUTED, UNNAMED_OPERATION})
_OPERATION_LABEL = re.compile(r"[A-Za-z0-9_]+")
_seen_operations: set[str] = set()
_operation_children: dict[tuple[str, bool], tuple[Any, Any]] = {}
_http_children: dict[tuple[str, str], tuple[Any, Any]] = {}
_throttle_children: dict[str, Any] = {}


def operation_label(name: str) -> str:
    """The metrics label of an operation name (see above)."""
    if name in _FIXED_LABELS:
        return name
    label = name[:MAX_OPERATION_LABEL_LENGTH]
    if not _OPERATION_LABEL.fullmatch(label):
        return OTHER_OPERATION
    if label not in _seen_operations:
        if len(_seen_operations) >= MAX_OPERATION_LABELS:
            return OTHER_OPERATION
        _seen_operations.add(label)
    return label


def observe_operation(name: str, seconds: float, *, ok: bool) -> None:
    label = operation_label(name)
    children = _operation_children.get((label, ok))
    if children is None:
        # labels() takes a lock and builds a key on every call: keep the children.
        children = _operation_children[(label, ok)] = (
            GRAPHQL_OPERATIONS.labels(label, "ok" if ok else "error"), GRAPHQL_LATENCY.labels(label))
    children[0].inc()
    children[1].observe(seconds)


def observe_throttle_refusal(key: str) -> None:
    """Count a refusal of throttle ``key`` under its kind (its first two parts)."""
    kind = ":".join(key.split(":", 2)[:2])
    child = _throttle_children.get(kind)
    if child is None:
        child = _throttle_children[kind] = THROTTLE_REFUSALS.labels(kind)
    child.inc()


def observe_http(route: str, status: str, seconds: float) -> None:
    children = _http_children.get((route, status))
    if children is None:
        children = _http_children[(route, status)] = (HTTP_REQUESTS.labels(route, status), HTTP_LATENCY.labels(route))
    children[0].inc()
    children[1].observe(seconds)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record, not the stream of
    when logging was configured (a command run inside a test harness or a daemon that
    swaps stderr would otherwise write to a closed file)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


# Loggers whose INFO lines are library chatter, not news to an operator: alembic's
# "Context impl PostgresqlImpl" on every command, pgserver's initdb and pg_ctl transcripts
# (about 70 lines at each start of the embedded server). Their warnings still show.
QUIET_LOGGERS = ("alembic", "pgserver")


def configure_logging(level: str = "INFO", *, as_json: bool = False) -> None:
    handler = StderrHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
