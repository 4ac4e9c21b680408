"""Operation log (操作日志): who did what, from where, when, and with what result."""
