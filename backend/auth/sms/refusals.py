"""A vendor's refusal as the typed error the resident sees (docs/sms.md): never INTERNAL.

The number's own limits at the vendor (Aliyun ``isv.BUSINESS_LIMIT_CONTROL``, Tencent
``LimitExceeded.PhoneNumber…``) become :class:`SmsPhoneLimited`, a number the vendor
will not send to :class:`SmsInvalidPhone`, and everything else the installation must fix
(template, signature, balance, credentials) :class:`SmsRejected`; the log keeps the
vendor's code and message.
"""

from __future__ import annotations

from typing import Any

from backend.auth.errors import SmsInvalidPhone, SmsPhoneLimited, SmsRejected

_PHONE_LIMITED = frozenset({
    "isv.BUSINESS_LIMIT_CONTROL",
    "LimitExceeded.PhoneNumberCountLimit",
    "LimitExceeded.PhoneNumberDailyLimit",
    "LimitExceeded.PhoneNumberOneHourLimit",
    "LimitExceeded.PhoneNumberSameContentDailyLimit",
    "LimitExceeded.PhoneNumberThirtySecondLimit",
    "LimitExceeded.DeliveryFrequencyLimit",
})
_INVALID_PHONE = frozenset({
    "isv.MOBILE_NUMBER_ILLEGAL",
    "isv.MOBILE_COUNT_OVER_LIMIT",
    "InvalidParameterValue.IncorrectPhoneNumber",
    "FailedOperation.PhoneNumberInBlacklist",
    "FailedOperation.PhoneNumberOnBlacklist",
})


def refusal(vendor: str, code: str, message: str, answer: Any) -> SmsRejected:
    """The typed error for the vendor's refusal ``code`` (``answer`` kept for the log)."""
    detail = f"{vendor} refused: {code}: {message[:300]}"
    if code in _PHONE_LIMITED:
        return SmsPhoneLimited(answer=answer, detail=detail)
    if code in _INVALID_PHONE:
        return SmsInvalidPhone(answer=answer, detail=detail)
    return SmsRejected(answer=answer, detail=detail)
