"""Remote control's refusals (each zh + en, codes in ``backend.errors``)."""

from __future__ import annotations

from backend.errors import DomainError, ErrorCode

# Wrong tries in a row that lock a user's execution password (issue 20).
MAX_WRONG_TRIES = 5


class MeterHasNoValve(DomainError):
    code = ErrorCode.REMOTE_METER_HAS_NO_VALVE

    def __init__(self, meter_code: str, *, field: str | None = "meterIds") -> None:
        super().__init__(f"水表 {meter_code} 没有阀门, 不能开关阀", f"Meter {meter_code} has no valve", field=field)


class MeterUnreachable(DomainError):
    code = ErrorCode.REMOTE_METER_UNREACHABLE

    def __init__(self, meter_code: str, *, field: str | None = "meterIds") -> None:
        super().__init__(f"水表 {meter_code} 未接入集中器或 NB-IoT, 无法远程操作",
                         f"Meter {meter_code} is on no concentrator and no NB-IoT topic", field=field)


class CommandNotForTarget(DomainError):
    code = ErrorCode.REMOTE_COMMAND_NOT_FOR_TARGET

    def __init__(self, kind: str, target_kind: str) -> None:
        super().__init__(f"命令 {kind} 不适用于{target_kind}", f"The command {kind} is not for a {target_kind}",
                         field="kind")


class ParamsInvalid(DomainError):
    code = ErrorCode.REMOTE_PARAMS_INVALID

    def __init__(self, message: str, message_en: str, *, name: str | None = None) -> None:
        super().__init__(message, message_en, field=f"params.{name}" if name else "params")


class SelectionEmpty(DomainError):
    code = ErrorCode.REMOTE_SELECTION_EMPTY
    message = "所选范围内没有可操作的水表"
    message_en = "The selection holds no meter you may command"


class SelectionTooLarge(DomainError):
    code = ErrorCode.REMOTE_SELECTION_TOO_LARGE

    def __init__(self, limit: int) -> None:
        super().__init__(f"一次最多操作 {limit} 块水表, 请缩小范围", f"At most {limit} meters at once; narrow the selection",
                         field="selection")


class CommandNotHeld(DomainError):
    code = ErrorCode.REMOTE_COMMAND_NOT_HELD
    message = "该命令不在本采集进程手中 (已超时、已完成或被他人接管)"
    message_en = "This worker does not hold the command (timed out, finished or taken over)"


class TimeLimitInvalid(DomainError):
    code = ErrorCode.REMOTE_TIME_LIMIT_INVALID

    def __init__(self, low: int, high: int) -> None:
        super().__init__(f"命令时限须在 {low} 至 {high} 秒之间", f"The time limit is {low} to {high} seconds",
                         field="timeLimitS")


class ScheduleInvalid(DomainError):
    code = ErrorCode.PATROL_SCHEDULE_INVALID
    message = "巡测时间须为 5 段 cron 表达式 (分 时 日 月 周), 且不能比每分钟更频繁"
    message_en = "The schedule is a 5-field cron expression (minute hour day month weekday)"

    def __init__(self) -> None:
        super().__init__(field="schedule")


class ExecutionPasswordNotSet(DomainError):
    code = ErrorCode.EXECUTION_PASSWORD_NOT_SET
    message = "尚未设置执行密码, 请先设置"
    message_en = "No execution password is set; set one first"

    def __init__(self) -> None:
        super().__init__(field="executionPassword")


class ExecutionPasswordWrong(DomainError):
    """A wrong try: the caller records it (``record_wrong_execution_password``) in a
    transaction that stands although the command is refused."""

    code = ErrorCode.EXECUTION_PASSWORD_WRONG

    def __init__(self, *, staff_user_id: int, tries_left: int) -> None:
        self.staff_user_id = staff_user_id
        if tries_left > 0:
            super().__init__(f"执行密码错误, 再错 {tries_left} 次将被锁定",
                             f"Wrong execution password; {tries_left} more wrong tries lock it", field="executionPassword")
        else:
            super().__init__("执行密码错误, 已被锁定, 请联系管理员解锁",
                             "Wrong execution password; it is now locked, ask an administrator",
                             field="executionPassword")


class ExecutionPasswordLocked(DomainError):
    code = ErrorCode.EXECUTION_PASSWORD_LOCKED
    message = f"执行密码连续错误 {MAX_WRONG_TRIES} 次已被锁定, 请联系管理员解锁"
    message_en = f"The execution password is locked after {MAX_WRONG_TRIES} wrong tries; ask an administrator"

    def __init__(self) -> None:
        super().__init__(field="executionPassword")


class ExecutionPasswordInvalid(DomainError):
    code = ErrorCode.EXECUTION_PASSWORD_INVALID

    def __init__(self, message: str, message_en: str) -> None:
        super().__init__(message, message_en, field="newPassword")
