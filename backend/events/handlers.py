"""The modules that register event handlers, imported by the job worker.

A domain that handles events puts its ``@handles(...)`` functions in a module of its own
(``backend/billing/handlers.py``) and adds that module here, so the worker registers
every entrypoint before it starts taking jobs.
"""

from __future__ import annotations

import importlib

from backend.events.service import HandlerRegistry, registry

HANDLER_MODULES: tuple[str, ...] = ()


def load_handlers() -> HandlerRegistry:
    """Import every handler module and return the process-wide registry they fill."""
    for module in HANDLER_MODULES:
        importlib.import_module(module)
    return registry
