"""Why ingest did not store a reading: a per-row reason in ``IngestResult.rejected``, not
a raised error. The codes are members of the API's one ``ErrorCode`` enum, so an upload's
row report and a manual entry's refusal carry the same code."""

from __future__ import annotations

from backend.errors import ErrorCode

# The subset of ErrorCode that ingest reports per row.
RejectionCode = ErrorCode

# code -> (Chinese, English)
REJECTION_MESSAGES: dict[ErrorCode, tuple[str, str]] = {
    ErrorCode.UNKNOWN_METER: ("表计不存在", "Unknown meter"),
    ErrorCode.READ_AT_IN_FUTURE: ("抄表时间晚于当前时间", "Reading time is in the future"),
    ErrorCode.READ_BEFORE_INSTALL: ("抄表时间早于表计安装日期", "Reading time is before the meter's installation"),
    ErrorCode.INVALID_TOTAL: ("累计读数无效 (负数或非数字)", "Register total is negative or not a finite number"),
    ErrorCode.NAIVE_DATETIME: ("抄表时间缺少时区", "Reading time has no time zone"),
}
