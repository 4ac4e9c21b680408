"""SMS senders for resident login codes. ``log`` writes the code to the log (development
and the demo); a gateway adapter implements :class:`backend.auth.service.SmsSender`."""

from __future__ import annotations

import logging

log = logging.getLogger("shuiwu.sms")


class LogSmsSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send_login_code(self, phone: str, code: str) -> None:
        self.sent.append((phone, code))
        del self.sent[:-100]  # keep only the latest, for the demo and tests
        log.warning("SMS login code for %s: %s (sms_sender=log: nothing was really sent)", phone, code)

    async def send_binding_code(self, phone: str, code: str, account_no: str) -> None:
        self.sent.append((phone, code))
        del self.sent[:-100]
        log.warning("SMS household binding code for %s (account %s): %s (sms_sender=log: nothing was really sent)",
                    phone, account_no, code)


_SENDERS = {"log": LogSmsSender}
_instances: dict[str, LogSmsSender] = {}


def sms_sender(name: str) -> LogSmsSender:
    """The process's sender of that name (one instance, so tests can read what it sent)."""
    if name not in _SENDERS:
        raise ValueError(f"unknown SMS sender {name!r}")
    if name not in _instances:
        _instances[name] = _SENDERS[name]()
    return _instances[name]
