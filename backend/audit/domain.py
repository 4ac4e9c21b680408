"""The operation log's declaration (操作日志)."""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Domain, Job, PersonalData

DOMAIN = Domain(
    name="audit",
    title="操作日志",
    models=("backend.audit.models",),
    schema="backend.audit.schema",
    routes="backend.audit.http:routes",
    # The operation log's writer, for the shared layers before it (auth's token route).
    services="backend.audit.service:offered",
    menus=(
        Menu("audit", "操作日志", "Operation log", (
            _p("audit:read", "查看操作日志", "View the operation log"),
            _p("audit:export", "导出操作日志", "Export the operation log"),
        )),
    ),
    operations=(
        Operation("exportAuditLog", "导出操作日志", "Export the operation log", "audit"),
    ),
    jobs=(
        Job("purge_operation_log", "backend.audit.jobs:purge_operation_log", cron="41 4 * * *",
            description="Delete operation-log entries past SHUIWU_AUDIT_RETENTION_DAYS"),
    ),
    personal_data=PersonalData(
        export="backend.audit.privacy:export",
        erase="backend.audit.privacy:erase",
        held={
            "audit_log.actor_name": "entries they made or naming their phone: exported (a staff actor as 工作人员); "
                                    "erased (those and the entries about their households): phone, names, address "
                                    "and ID numbers become the pseudonym; phones masked after "
                                    "SHUIWU_RETENTION_LOG_PHONES_DAYS",
            "audit_log.summary": "as actor_name",
            "audit_log.payload": "as actor_name (the logged input)",
            "audit_log.ip": "exported and erased (cleared) in the entries of their own requests",
        },
        excluded={"audit_log.request_id": "a request's id, for the server logs"},
    ),
)
