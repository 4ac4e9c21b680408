"""Why a reading was rejected by ingest (a per-row reason, not a raised error).

These are kept here rather than in ``backend.errors.ErrorCode`` for now: ``ErrorCode`` is
the GraphQL ``ErrorCode`` enum, and the readings mutations that would expose them
(``enterReading``, uploads) come with the next slice, together with ``schema.graphql``.
"""

from __future__ import annotations

from enum import StrEnum


class RejectionCode(StrEnum):
    UNKNOWN_METER = "UNKNOWN_METER"
    READ_AT_IN_FUTURE = "READ_AT_IN_FUTURE"
    READ_BEFORE_INSTALL = "READ_BEFORE_INSTALL"
    INVALID_TOTAL = "INVALID_TOTAL"
    NAIVE_DATETIME = "NAIVE_DATETIME"


# code -> (Chinese, English)
REJECTION_MESSAGES: dict[RejectionCode, tuple[str, str]] = {
    RejectionCode.UNKNOWN_METER: ("表计不存在", "Unknown meter"),
    RejectionCode.READ_AT_IN_FUTURE: ("抄表时间晚于当前时间", "Reading time is in the future"),
    RejectionCode.READ_BEFORE_INSTALL: ("抄表时间早于表计安装日期", "Reading time is before the meter's installation"),
    RejectionCode.INVALID_TOTAL: ("累计读数无效 (负数或非数字)", "Register total is negative or not a finite number"),
    RejectionCode.NAIVE_DATETIME: ("抄表时间缺少时区", "Reading time has no time zone"),
}
