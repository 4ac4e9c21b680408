"""Alarms of any subject (告警): one table, one workflow (open or refresh, acknowledge,
close by hand, auto-close), the only emitter of ``alarm.opened`` / ``alarm.closed``."""
