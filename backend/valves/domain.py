"""The valve policy (关阀策略): the handler of ``account.threshold_crossed`` that closes a
prepaid household's valve at its close line (not at night, not on days off, only after
alerts reached the resident, never for a vulnerable account) and reopens what it
closed, and the job that looks again later (``backend.valves.handlers``). After remote:
it queues remote commands; messages are the notifications domain's."""

from __future__ import annotations

from backend.domain import Domain, Job
from backend.events.service import EFFECT_HORIZON, Handler
from backend.valves.settings import ValveSettings

DOMAIN = Domain(
    name="valves",
    title="关阀策略",
    settings=ValveSettings,
    handlers=(
        # A valve command leaves the database: a replay of history skips old events.
        Handler("account.threshold_crossed", "valves.apply_policy", "backend.valves.handlers:apply_valve_policy",
                horizon=EFFECT_HORIZON, permissions=frozenset({"remote:control"})),
    ),
    jobs=(
        Job("recheck_valve_policy", "backend.valves.handlers:recheck_valve_policy",
            permissions=frozenset({"remote:control"}),
            description="the valve policy looks again when it said later (night, day off, alerts on their way)"),
    ),
    # The valves the policy closed on the demo's accounts at their close line, as history.
    demo="backend.valves.demo:demo_step",
)
