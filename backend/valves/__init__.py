"""The humane valve policy (issue 20, item 6): when a prepaid account at its close line
gets its valve closed, and when a valve the policy closed opens again
(``backend.valves.policy``; its inputs from the database in ``backend.valves.inputs``)."""
