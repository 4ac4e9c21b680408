"""The events of remote commands (DESIGN.md "Events": owned by remote). The remote
service (``backend.remote.service``) is their only emitter: one event per state a
statement moved commands into, naming all of them."""

from __future__ import annotations

from dataclasses import dataclass

from backend.events.payloads import event_payload


@event_payload("command.changed")
@dataclass(frozen=True, slots=True)
class CommandChanged:
    """Commands were queued, claimed (``sent``, or ``pending_delivery`` for NB-IoT
    meters), put back in the queue for a retry or given back unstarted by a stopping
    worker: their ids, the state they entered, and the links they travel on
    (``concentrator:<id>`` or ``mqtt``), so a worker wakes only the buses concerned."""

    command_ids: tuple[int, ...]
    state: str
    links: tuple[str, ...] = ()


@event_payload("command.finished")
@dataclass(frozen=True, slots=True)
class CommandFinished:
    """Commands reached an end state (``succeeded``, ``failed``, ``timed_out``, or
    ``cancelled``: a purchase whose payment went back before it was sent)."""

    command_ids: tuple[int, ...]
    state: str
