"""Errors a user can cause, shared by every domain and free of any framework.

A service raises a :class:`DomainError`; the GraphQL layer turns it into a ``UserError``
in a mutation payload (``errors: [UserError!]!``) or, for the request-level kinds
(:class:`NotAuthenticated`, :class:`Forbidden`, :class:`NotFound`, …), into a top-level
error whose ``extensions.code`` is the same stable code.

Every code of the API is a member of :class:`ErrorCode`: one enum for the whole API
(DESIGN.md, "Contracts"). A domain adds its codes here, under its own heading, and keeps
its error classes in its own ``errors.py``.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # Request level (top-level errors, DESIGN.md "Contracts").
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    BAD_USER_INPUT = "BAD_USER_INPUT"
    QUERY_TOO_DEEP = "QUERY_TOO_DEEP"
    QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
    PAGE_SIZE_EXCEEDED = "PAGE_SIZE_EXCEEDED"
    RATE_LIMITED = "RATE_LIMITED"
    QUERY_TIMEOUT = "QUERY_TIMEOUT"
    QUERY_TOO_LARGE = "QUERY_TOO_LARGE"
    INTERNAL = "INTERNAL"
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    # A subscription resumed (afterEventId) past more stored events than it replays.
    REPLAY_TOO_LONG = "REPLAY_TOO_LONG"

    # Input validation shared by all forms.
    REQUIRED = "REQUIRED"
    INVALID = "INVALID"
    TOO_LONG = "TOO_LONG"
    DUPLICATE = "DUPLICATE"
    INVALID_MONEY = "INVALID_MONEY"

    # auth
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    ACCOUNT_LOCKED = "ACCOUNT_LOCKED"
    ACCOUNT_INACTIVE = "ACCOUNT_INACTIVE"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_REVOKED = "TOKEN_REVOKED"
    PASSWORD_TOO_WEAK = "PASSWORD_TOO_WEAK"
    INVALID_CODE = "INVALID_CODE"
    CODE_RATE_LIMITED = "CODE_RATE_LIMITED"
    CODE_DAILY_LIMIT = "CODE_DAILY_LIMIT"
    # SMS: the installation's daily spend cap, a vendor's refusal, the vendor's limit per number
    SMS_DAILY_CAP = "SMS_DAILY_CAP"
    SMS_NOT_SENT = "SMS_NOT_SENT"
    SMS_PHONE_LIMITED = "SMS_PHONE_LIMITED"
    GRANT_EXCEEDS_OWN = "GRANT_EXCEEDS_OWN"
    UNKNOWN_PERMISSION = "UNKNOWN_PERMISSION"
    UNKNOWN_AREA = "UNKNOWN_AREA"
    ROLE_HIERARCHY = "ROLE_HIERARCHY"
    ROLE_IN_USE = "ROLE_IN_USE"
    HOUSEHOLD_MISMATCH = "HOUSEHOLD_MISMATCH"
    ALREADY_BOUND = "ALREADY_BOUND"
    CANNOT_DEACTIVATE_SELF = "CANNOT_DEACTIVATE_SELF"
    HAS_HISTORY = "HAS_HISTORY"
    # Units: shared catalogs need a scope over the whole tree (backend.auth.scope).
    WHOLE_TREE_REQUIRED = "WHOLE_TREE_REQUIRED"

    # archives
    INVALID_ADDRESS = "INVALID_ADDRESS"
    INVALID_PHONE = "INVALID_PHONE"
    INVALID_ID_NUMBER = "INVALID_ID_NUMBER"
    INVALID_ROOM = "INVALID_ROOM"
    AREA_NOT_EMPTY = "AREA_NOT_EMPTY"
    AREA_MOVE_INVALID = "AREA_MOVE_INVALID"
    METER_ALREADY_ASSIGNED = "METER_ALREADY_ASSIGNED"
    METER_NOT_ASSIGNED = "METER_NOT_ASSIGNED"
    METER_UNAVAILABLE = "METER_UNAVAILABLE"
    METERS_STILL_ASSIGNED = "METERS_STILL_ASSIGNED"
    HOUSEHOLD_CLOSED = "HOUSEHOLD_CLOSED"
    BALANCE_OUTSTANDING = "BALANCE_OUTSTANDING"
    DEVICE_IN_USE = "DEVICE_IN_USE"
    MODEL_IN_USE = "MODEL_IN_USE"
    METER_HAS_READINGS = "METER_HAS_READINGS"
    # A life-cycle step the meter's status or kind does not allow (install, fault, repair …).
    METER_STATE_INVALID = "METER_STATE_INVALID"
    # A meter serves only households in its own area's subtree (docs/security.md).
    CROSS_AREA_ASSIGNMENT = "CROSS_AREA_ASSIGNMENT"
    # Monitoring stations: instruments still belong to it / not a flow or pressure monitoring point /
    # an instrument's area follows its station's.
    STATION_NOT_EMPTY = "STATION_NOT_EMPTY"
    NOT_A_STATION_INSTRUMENT = "NOT_A_STATION_INSTRUMENT"
    INSTRUMENT_AREA_FIXED = "INSTRUMENT_AREA_FIXED"

    # exports (Excel import/export shared by the domains)
    NOT_XLSX = "NOT_XLSX"
    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    EMPTY_SHEET = "EMPTY_SHEET"
    MISSING_COLUMNS = "MISSING_COLUMNS"
    UNKNOWN_COLUMNS = "UNKNOWN_COLUMNS"
    IMPORT_ROWS_INVALID = "IMPORT_ROWS_INVALID"
    TOO_MANY_ROWS = "TOO_MANY_ROWS"
    IMPORT_TIME_EXCEEDED = "IMPORT_TIME_EXCEEDED"

    # readings: why ingest did not store a reading (per row, backend.readings.errors)
    UNKNOWN_METER = "UNKNOWN_METER"
    READ_AT_IN_FUTURE = "READ_AT_IN_FUTURE"
    READ_BEFORE_INSTALL = "READ_BEFORE_INSTALL"
    INVALID_TOTAL = "INVALID_TOTAL"
    NAIVE_DATETIME = "NAIVE_DATETIME"

    # Alarms (backend.alarms; the rules of abnormal meters: backend.readings.alarms)
    ALARM_ALREADY_ACKNOWLEDGED = "ALARM_ALREADY_ACKNOWLEDGED"
    ALARM_ALREADY_CLOSED = "ALARM_ALREADY_CLOSED"
    ALARM_RULE_DEFAULT = "ALARM_RULE_DEFAULT"

    # Readings screens (real-time, history, monitoring, query schemes, exports)
    RANGE_TOO_LONG = "RANGE_TOO_LONG"

    # Reading entry (manual entry, uploads, corrections, estimates: backend.readings.entry)
    INVALID_READ_AT = "INVALID_READ_AT"
    READING_LOWER_THAN_PREVIOUS = "READING_LOWER_THAN_PREVIOUS"
    # A dial photo that is no image the caller stored (a missing one is FILE_NOT_FOUND)
    PHOTO_INVALID = "PHOTO_INVALID"

    # Notices (公告: backend.notifications.notices)
    NOTICE_AUDIENCE_OUT_OF_SCOPE = "NOTICE_AUDIENCE_OUT_OF_SCOPE"
    NOTICE_STATE_INVALID = "NOTICE_STATE_INVALID"

    # Analytics (usage statistics, ledgers, comparisons: backend.readings.analytics)
    HOURLY_SCOPE_UNSUPPORTED = "HOURLY_SCOPE_UNSUPPORTED"

    # Gateways to outside services (payments, push, SMS, banks: backend.gateways.errors)
    GATEWAY_TIMEOUT = "GATEWAY_TIMEOUT"
    GATEWAY_BUSY = "GATEWAY_BUSY"
    GATEWAY_UNAVAILABLE = "GATEWAY_UNAVAILABLE"
    GATEWAY_REJECTED = "GATEWAY_REJECTED"
    GATEWAY_BAD_ANSWER = "GATEWAY_BAD_ANSWER"
    # Files (the storage of photos, exports, receipts: backend.files); a put past the
    # caller's size cap is FILE_TOO_LARGE (above)
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"

    # Billing: tariffs (backend.billing.errors)
    TARIFF_INVALID = "TARIFF_INVALID"
    TARIFF_TIERS_MISMATCH = "TARIFF_TIERS_MISMATCH"
    TARIFF_PRICE_PLACES = "TARIFF_PRICE_PLACES"
    TARIFF_VERSION_CONFLICT = "TARIFF_VERSION_CONFLICT"
    TARIFF_NOT_IN_FORCE = "TARIFF_NOT_IN_FORCE"
    # Billing: accounts and the ledger
    ACCOUNT_EXISTS = "ACCOUNT_EXISTS"
    NO_ACCOUNT = "NO_ACCOUNT"
    ACCOUNT_CLOSED = "ACCOUNT_CLOSED"
    ACCOUNT_UNSETTLED = "ACCOUNT_UNSETTLED"
    ENTRY_AMOUNT_INVALID = "ENTRY_AMOUNT_INVALID"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    # Billing: reading routes (抄表本, backend.billing.routes)
    ROUTE_METER_ON_OTHER_ROUTE = "ROUTE_METER_ON_OTHER_ROUTE"
    ROUTE_METER_OUTSIDE_AREA = "ROUTE_METER_OUTSIDE_AREA"
    ROUTE_METER_NOT_HOUSEHOLD = "ROUTE_METER_NOT_HOUSEHOLD"
    ROUTE_METER_REPEATED = "ROUTE_METER_REPEATED"
    INVALID_PERIOD = "INVALID_PERIOD"
    # Payments (backend.payments.errors)
    PAYMENT_AMOUNT_INVALID = "PAYMENT_AMOUNT_INVALID"
    PAYMENT_AMOUNT_MISMATCH = "PAYMENT_AMOUNT_MISMATCH"
    PAYMENT_ABOVE_MAXIMUM = "PAYMENT_ABOVE_MAXIMUM"
    PAYMENT_REFERENCE_REQUIRED = "PAYMENT_REFERENCE_REQUIRED"
    PAYMENT_ALREADY_REVERSED = "PAYMENT_ALREADY_REVERSED"
    REVERSAL_NOT_ALLOWED = "REVERSAL_NOT_ALLOWED"
    CASHIER_DAY_LOCKED = "CASHIER_DAY_LOCKED"
    CASHIER_DAY_HANDED_OVER = "CASHIER_DAY_HANDED_OVER"
    CASHIER_DAY_UNBALANCED = "CASHIER_DAY_UNBALANCED"
    # Payments: online orders, notifications and refunds (backend.payments.online.errors)
    PAYMENT_CHANNEL_UNAVAILABLE = "PAYMENT_CHANNEL_UNAVAILABLE"
    PAYMENT_SCENE_UNSUPPORTED = "PAYMENT_SCENE_UNSUPPORTED"
    PAYMENT_OPENID_REQUIRED = "PAYMENT_OPENID_REQUIRED"
    PAYMENT_H5_IN_WECHAT = "PAYMENT_H5_IN_WECHAT"
    PAYMENT_ONLINE_ABOVE_MAXIMUM = "PAYMENT_ONLINE_ABOVE_MAXIMUM"
    PAYMENT_ORDER_CLOSED = "PAYMENT_ORDER_CLOSED"
    PAYMENT_ORDER_PAID = "PAYMENT_ORDER_PAID"
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    PAYMENT_CODE_INVALID = "PAYMENT_CODE_INVALID"
    PAYMENT_ACCOUNT_NOT_PAYABLE = "PAYMENT_ACCOUNT_NOT_PAYABLE"
    REFUND_NOT_POSSIBLE = "REFUND_NOT_POSSIBLE"
    REFUND_ABOVE_REFUNDABLE = "REFUND_ABOVE_REFUNDABLE"
    # Payments: receipts (backend.payments.receipts.errors)
    RECEIPT_LAYOUT_INVALID = "RECEIPT_LAYOUT_INVALID"
    RECEIPT_FONT_MISSING = "RECEIPT_FONT_MISSING"
    RECEIPT_FORM_VOID = "RECEIPT_FORM_VOID"
    RECEIPT_FORM_USED = "RECEIPT_FORM_USED"
    RECEIPT_FORM_NOT_IN_STOCK = "RECEIPT_FORM_NOT_IN_STOCK"
    RECEIPT_FORMS_EXHAUSTED = "RECEIPT_FORMS_EXHAUSTED"
    RECEIPT_FORMS_OVERLAP = "RECEIPT_FORMS_OVERLAP"
    # Billing: reading review (backend.billing.review)
    REVIEW_DECIDED = "REVIEW_DECIDED"
    REVIEW_NOT_DECIDED = "REVIEW_NOT_DECIDED"
    NOTHING_TO_ESTIMATE = "NOTHING_TO_ESTIMATE"
    # Billing: postpaid bills, allocations and late fees (backend.billing.errors)
    BILLING_PERIOD_NOT_ENDED = "BILLING_PERIOD_NOT_ENDED"
    BILLING_PERIOD_MISALIGNED = "BILLING_PERIOD_MISALIGNED"
    BILL_VOIDED = "BILL_VOIDED"
    BILL_PAID = "BILL_PAID"
    BILL_NOT_LATEST = "BILL_NOT_LATEST"
    LATE_FEE_NOTHING_TO_WAIVE = "LATE_FEE_NOTHING_TO_WAIVE"
    # Billing: bill notices (backend.billing.notices)
    NOTICE_FONT_MISSING = "NOTICE_FONT_MISSING"
    # Work orders (报修工单: backend.workorders.errors)
    WORKORDER_TRANSITION_NOT_ALLOWED = "WORKORDER_TRANSITION_NOT_ALLOWED"
    WORKORDER_ALREADY_TAKEN = "WORKORDER_ALREADY_TAKEN"
    WORKORDER_ALREADY_RATED = "WORKORDER_ALREADY_RATED"
    WORKORDER_NOT_ASSIGNEE = "WORKORDER_NOT_ASSIGNEE"
    WORKORDER_RATING_INVALID = "WORKORDER_RATING_INVALID"
    # Remote control and patrol reads (远程控制 / 巡测: backend.remote.errors)
    REMOTE_METER_HAS_NO_VALVE = "REMOTE_METER_HAS_NO_VALVE"
    REMOTE_METER_UNREACHABLE = "REMOTE_METER_UNREACHABLE"
    REMOTE_COMMAND_NOT_FOR_TARGET = "REMOTE_COMMAND_NOT_FOR_TARGET"
    REMOTE_PARAMS_INVALID = "REMOTE_PARAMS_INVALID"
    REMOTE_SELECTION_EMPTY = "REMOTE_SELECTION_EMPTY"
    REMOTE_SELECTION_TOO_LARGE = "REMOTE_SELECTION_TOO_LARGE"
    REMOTE_COMMAND_NOT_HELD = "REMOTE_COMMAND_NOT_HELD"
    REMOTE_TIME_LIMIT_INVALID = "REMOTE_TIME_LIMIT_INVALID"
    PATROL_SCHEDULE_INVALID = "PATROL_SCHEDULE_INVALID"
    EXECUTION_PASSWORD_NOT_SET = "EXECUTION_PASSWORD_NOT_SET"
    EXECUTION_PASSWORD_WRONG = "EXECUTION_PASSWORD_WRONG"
    EXECUTION_PASSWORD_LOCKED = "EXECUTION_PASSWORD_LOCKED"
    EXECUTION_PASSWORD_INVALID = "EXECUTION_PASSWORD_INVALID"
    # Webhooks for third parties (backend.webhooks.errors)
    WEBHOOK_URL_INVALID = "WEBHOOK_URL_INVALID"
    WEBHOOK_HOST_UNRESOLVED = "WEBHOOK_HOST_UNRESOLVED"
    WEBHOOK_ADDRESS_REFUSED = "WEBHOOK_ADDRESS_REFUSED"
    WEBHOOK_EVENT_TYPE_INVALID = "WEBHOOK_EVENT_TYPE_INVALID"
    WEBHOOK_ENDPOINT_LIMIT = "WEBHOOK_ENDPOINT_LIMIT"
    WEBHOOK_DELIVERY_PENDING = "WEBHOOK_DELIVERY_PENDING"


class DomainError(Exception):
    """A refusal a user can cause. Carries a stable code and a zh + en message.

    ``field`` names the input field at fault (a form shows the message next to it);
    ``None`` means the request as a whole.
    """

    code: ErrorCode = ErrorCode.INVALID
    message: str = "请求无效"
    message_en: str = "Invalid request"
    # run_mutation audits a refused mutation unless its refusal says otherwise (a throttle
    # refusal repeated from memory: the first one of its key and minute was audited).
    audited: bool = True

    def __init__(
        self,
        message: str | None = None,
        message_en: str | None = None,
        *,
        field: str | None = None,
        code: ErrorCode | None = None,
    ) -> None:
        if message is not None:
            self.message = message
        if message_en is not None:
            self.message_en = message_en
        if code is not None:
            self.code = code
        self.field = field
        super().__init__(f"{self.code}: {self.message_en}")


class ValidationFailed(DomainError):
    """Several field errors at once, so a form can show them together."""

    code = ErrorCode.INVALID

    def __init__(self, errors: list[DomainError]) -> None:
        self.errors = errors
        super().__init__(errors[0].message, errors[0].message_en, field=errors[0].field, code=errors[0].code)


class NotAuthenticated(DomainError):
    code = ErrorCode.UNAUTHENTICATED
    message = "请先登录"
    message_en = "Authentication required"


class Forbidden(DomainError):
    code = ErrorCode.FORBIDDEN
    message = "没有权限执行此操作"
    message_en = "You do not have permission to do this"


class NotFound(DomainError):
    """Also raised for objects outside the caller's data scope, so existence does not leak."""

    code = ErrorCode.NOT_FOUND
    message = "对象不存在"
    message_en = "Not found"


class BadUserInput(DomainError):
    code = ErrorCode.BAD_USER_INPUT
    message = "输入无效"
    message_en = "Bad input"


class RateLimited(DomainError):
    code = ErrorCode.RATE_LIMITED
    message = "请求过于频繁, 请稍后再试"
    message_en = "Too many requests, try again later"


class UnsupportedMediaType(DomainError):
    """A request body of a type the route does not read (HTTP 415)."""

    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE

    def __init__(self, expected: str) -> None:
        super().__init__(f"请求体须为 {expected}", f"The body must be {expected}")


class QueryTimeout(DomainError):
    """PostgreSQL cut a statement at ``statement_timeout`` (backend.db.limit_refusal)."""

    code = ErrorCode.QUERY_TIMEOUT
    message = "查询超时, 请缩小范围"
    message_en = "The query took too long; narrow the range"


class QueryTooLarge(DomainError):
    """PostgreSQL cut a statement at ``temp_file_limit`` (backend.db.limit_refusal)."""

    code = ErrorCode.QUERY_TOO_LARGE
    message = "查询数据量过大, 请缩小范围"
    message_en = "The query needs too much temporary space; narrow the range"


class PageSizeExceeded(DomainError):
    code = ErrorCode.PAGE_SIZE_EXCEEDED
    message = "每页条数超过上限"
    message_en = "Page size above the maximum"


# The kinds that are request-level (top-level GraphQL errors) rather than payload errors.
REQUEST_LEVEL_CODES = frozenset(
    {
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.FORBIDDEN,
        ErrorCode.NOT_FOUND,
        ErrorCode.BAD_USER_INPUT,
        ErrorCode.QUERY_TOO_DEEP,
        ErrorCode.QUERY_TOO_COMPLEX,
        ErrorCode.PAGE_SIZE_EXCEEDED,
        ErrorCode.RATE_LIMITED,
        ErrorCode.QUERY_TIMEOUT,
        ErrorCode.QUERY_TOO_LARGE,
        ErrorCode.INTERNAL,
        ErrorCode.BODY_TOO_LARGE,
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        ErrorCode.REPLAY_TOO_LONG,
    }
)
