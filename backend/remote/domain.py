"""The remote domain's declaration (远程控制 / 实时数据采集 / 巡测任务设定, issue 20):
the field-command queue (``remote_commands``) and the leases workers take on links,
remote control with an execution password, patrol tasks and their runs, the catalog of
commands, the events ``command.changed`` / ``command.finished`` it owns, the handler
of payments' ``account.closed`` that closes the household's valves, and meter-side
prepaid (``backend.remote.purchases``: ``payment.succeeded`` sends a pending meter
write, ``command.finished`` reconciles it, a minute job retries).

It comes after workorders and before zones (DESIGN.md domain order). The worker that
carries the commands out (``shuiwu acquire``) calls its service in-process.

Permissions: ``remote:read`` (实时数据采集: read now, backfill; every command list),
``remote:control`` (远程控制: valves, a concentrator's switches), ``remote:params``
(参数管理: read and set parameters, sync clocks, a concentrator's meter list),
``remote:purchase`` (meter-side prepaid writes), ``patrols:read`` / ``patrols:manage``
(巡测任务设定). Remote commands also need the user's execution password; resetting and
unlocking it needs ``users:manage``.
"""

from __future__ import annotations

from backend.auth.menus import LogModule, Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Domain, Job, PersonalData
from backend.events.service import EFFECT_HORIZON, Handler

_COMMANDS = (
    ("readNow", "实时召测", "Read now", "realtime"),
    ("openValves", "开阀", "Open valves", "remote"),
    ("closeValves", "关阀", "Close valves", "remote"),
    ("readParams", "读取参数", "Read parameters", "remote"),
    ("setParams", "设置参数", "Set parameters", "remote"),
    ("syncClocks", "校时", "Sync clocks", "remote"),
    ("resumeMeterPurchases", "核对购水次数", "Resume meter purchases", "remote"),
    ("setExecutionPassword", "设置执行密码", "Set execution password", "execution_passwords"),
    ("resetExecutionPassword", "重置执行密码", "Reset execution password", "execution_passwords"),
    ("unlockExecutionPassword", "解锁执行密码", "Unlock execution password", "execution_passwords"),
    ("lockExecutionPassword", "锁定执行密码", "Lock execution password", "execution_passwords"),
    ("createPatrolTask", "新建巡测任务", "Create patrol task", "patrols"),
    ("updatePatrolTask", "修改巡测任务", "Update patrol task", "patrols"),
    ("enablePatrolTask", "启用巡测任务", "Enable patrol task", "patrols"),
    ("disablePatrolTask", "停用巡测任务", "Disable patrol task", "patrols"),
    ("deletePatrolTask", "删除巡测任务", "Delete patrol task", "patrols"),
)

DOMAIN = Domain(
    name="remote",
    title="远程控制",
    models=("backend.remote.models",),
    schema="backend.remote.schema",
    events=("backend.remote.events",),
    menus=(
        Menu("realtime", "实时数据采集", "Real-time reading", (
            _p("remote:read", "实时召测与补抄, 查看命令进度", "Read meters now and backfill; follow commands"),
        ), ("staff_web", "staff_mobile")),
        Menu("remote", "远程控制", "Remote control", (
            _p("remote:control", "开关阀与遥控", "Open and close valves; switch a concentrator's outputs"),
            _p("remote:params", "读取与设置参数, 校时", "Read and set parameters; sync clocks"),
            _p("remote:purchase", "写购水 (表端预付费)", "Write purchases to prepaid meters"),
        ), ("staff_web", "staff_mobile")),
        Menu("patrols", "巡测任务设定", "Patrol tasks", (
            _p("patrols:read", "查看巡测任务与执行记录", "View patrol tasks and their runs"),
            _p("patrols:manage", "新建、修改、启用与停用巡测任务", "Create, edit, enable and disable patrol tasks"),
        )),
    ),
    demo_grants={"repair": frozenset({"remote:read", "remote:control"})},
    log_modules=(LogModule("execution_passwords", "执行密码", "Execution passwords"),),
    operations=tuple(Operation(action, title, title_en, module) for action, title, title_en, module in _COMMANDS),
    handlers=(
        # A valve command leaves the database: a replay of history skips old events.
        Handler("account.closed", "remote.close_valves", "backend.remote.handlers:close_valves_of_closed_account",
                horizon=EFFECT_HORIZON, permissions=frozenset({"remote:control"})),
        # Meter-side prepaid (backend.remote.purchases): a payment's pending meter write goes
        # out; a finished purchase is reconciled against its count. Both act on the state
        # now (the write, the meter's count), so a replay adds no money twice.
        Handler("payment.succeeded", "remote.send_meter_writes", "backend.remote.purchases:send_paid_meter_writes",
                horizon=EFFECT_HORIZON, permissions=frozenset({"remote:purchase"})),
        Handler("command.finished", "remote.reconcile_purchases", "backend.remote.purchases:reconcile_purchases",
                permissions=frozenset({"remote:purchase"})),
    ),
    jobs=(
        Job("enqueue_due_patrols", "backend.remote.jobs:enqueue_due_patrols_job", cron="* * * * *",
            permissions=frozenset({"remote:read"}),
            description="巡测: the patrol runs due this minute and their read commands (dedupe: task and minute)"),
        Job("sweep_remote_commands", "backend.remote.jobs:sweep_commands_job", cron="* * * * *",
            description="commands past their time limit time out; a dead worker's go back to the queue"),
        Job("retry_meter_purchases", "backend.remote.purchases:retry_meter_purchases_job", cron="* * * * *",
            permissions=frozenset({"remote:purchase"}),
            description="表端预付费: purchases of reversed payments cancelled; pending meter writes sent (again)"),
    ),
    demo="backend.remote.demo:demo_step",
    # `demo run`: a meter simulator standing in for the demo's simulated bus, and the worker serving it.
    demo_run="acquisition.demo:run_simulated_field",
    # The field side: the acquisition worker, the CJ/T 188 codec by hand and the meter simulator.
    commands={"frame": "acquisition.cli:frame_app", "simulate": "acquisition.simulator:simulate_app",
              "acquire": "acquisition.worker:acquire_app"},
    personal_data=PersonalData(
        excluded={
            "remote_commands.issued_by_name": "the staff member's name, or 系统: never a resident's",
            "remote_commands.failure_reason": "why a device did not answer, in the worker's words",
            "remote_commands.claimed_by": "the acquisition worker (its lease holder name) that claimed it",
            "patrol_tasks.name": "a task's name (城东片区每日巡测)",
        },
    ),
)
