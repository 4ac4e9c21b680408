"""Archives (档案管理): areas, households, meter models, meters, concentrators, collectors,
meter assignments (配表) and replacements (换表).

Plain async functions over a session; the caller commits. Data scope is a path-prefix
match: ``areas.path LIKE ANY(:patterns)`` with the caller's ``Principal.scope_patterns()``,
applied inside every query that fetches rows. Functions that change an archive take
``scope_patterns`` too: an object outside them is NOT_FOUND, an area outside them is an
unknown area. ``scope_patterns=None`` means "no restriction" and is for system callers
(CLI, demo data, the acquisition worker), never for a request.

What varies is passed in: the clock (``now`` / dates), who acts (``changed_by``), the
terminal-password cipher, and the Money issue's balance check (``balance_checker``).

A meter serves a household only when the household's area is the meter's area or lies
below it (the household's area path starts with the meter's), so anyone whose scope
covers a meter also covers the household it serves, and screens that show a meter's
household never reveal one outside the reader's scope. Every change that creates an
assignment or moves an assigned meter, household or area keeps it (CROSS_AREA_ASSIGNMENT
otherwise): :func:`assign_meter`, :func:`replace_meter`, :func:`update_meter`,
:func:`update_household`, :func:`move_area`, and the Excel imports (backend.archives.excel).

The package is the domain's one service surface: other domains, the schema, the HTTP
routes and the tests import ``backend.archives.service`` (this ``__init__`` re-exports
every public name), never a module below it, so the split is invisible to them. Inside,
one module per thing a reader looks for: :mod:`.checks` (the field, uniqueness and
same-subtree checks every form shares), :mod:`.areas`, :mod:`.households`,
:mod:`.meters` (meter models and meters), :mod:`.life_cycle` (a meter's install, uninstall,
fault and repair), :mod:`.assignments` (配表, move-out, 换表) and
:mod:`.devices` (concentrators and collectors).
"""

from __future__ import annotations

from backend.archives.service.areas import (
    AreaChanges,
    area_page_query,
    areas_by_ids,
    areas_statement,
    create_area,
    delete_area,
    find_household,
    households_by_ids,
    move_area,
    rename_area,
    share_area_tree,
    update_area,
)
from backend.archives.service.assignments import (
    assign_meter,
    end_assignment,
    replace_meter,
)
from backend.archives.service.checks import (
    ACCOUNT_NO,
    ADDRESS_RULES,
    AREA_CODE,
    CALIBERS,
    CROSS_AREA_OPEN_ASSIGNMENTS,
    ID_NUMBER,
    KEEP,
    LANDLINE,
    METER_CODE,
    MOBILE,
    OTHER_ADDRESS,
    PARITIES,
    REGION_CODE,
    STOPBITS,
    RowT,
    as_stored,
    constraint_name,
    mask_id_number,
    parse_reading,
)
from backend.archives.service.devices import (
    ConcentratorChanges,
    TerminalPasswordCipher,
    concentrator_in_scope,
    concentrators_statement,
    create_concentrator,
    delete_collector,
    delete_concentrator,
    save_collector,
    terminal_password,
    update_concentrator,
)
from backend.archives.service.households import (
    HOUSEHOLD_AREA_COLUMNS,
    HOUSEHOLD_COLUMNS,
    BalanceChecker,
    HouseholdChanges,
    HouseholdOrder,
    assignments_by_household_ids,
    assignments_by_meter_ids,
    collectors_by_concentrator_ids,
    collectors_by_ids,
    concentrators_by_ids,
    create_household,
    delete_household,
    household_in_scope,
    household_page_query,
    meter_models_by_ids,
    meters_by_ids,
    no_balance,
    owners_by_household_ids,
    replacements_by_household_ids,
    set_household_status,
    status_history_by_household_ids,
    transfer_ownership,
    update_household,
)
from backend.archives.service.life_cycle import (
    install_meter,
    mark_meter_faulty,
    record_status_change,
    repair_meter,
    status_history_by_meter_ids,
    uninstall_meter,
)
from backend.archives.service.meters import (
    METER_COLUMNS,
    MeterChanges,
    MeterModelFields,
    MeterOrder,
    create_meter,
    delete_meter,
    delete_meter_model,
    meter_in_scope,
    meter_models_statement,
    meter_page_query,
    save_meter_model,
    set_meter_status,
    update_meter,
)

__all__ = [
    "ACCOUNT_NO",
    "ADDRESS_RULES",
    "AREA_CODE",
    "CALIBERS",
    "CROSS_AREA_OPEN_ASSIGNMENTS",
    "HOUSEHOLD_AREA_COLUMNS",
    "HOUSEHOLD_COLUMNS",
    "ID_NUMBER",
    "KEEP",
    "LANDLINE",
    "METER_CODE",
    "METER_COLUMNS",
    "MOBILE",
    "OTHER_ADDRESS",
    "PARITIES",
    "REGION_CODE",
    "STOPBITS",
    "AreaChanges",
    "BalanceChecker",
    "ConcentratorChanges",
    "HouseholdChanges",
    "HouseholdOrder",
    "MeterChanges",
    "MeterModelFields",
    "MeterOrder",
    "RowT",
    "TerminalPasswordCipher",
    "area_page_query",
    "areas_by_ids",
    "areas_statement",
    "as_stored",
    "assign_meter",
    "assignments_by_household_ids",
    "assignments_by_meter_ids",
    "collectors_by_concentrator_ids",
    "collectors_by_ids",
    "concentrator_in_scope",
    "concentrators_by_ids",
    "concentrators_statement",
    "constraint_name",
    "create_area",
    "create_concentrator",
    "create_household",
    "create_meter",
    "delete_area",
    "delete_collector",
    "delete_concentrator",
    "delete_household",
    "delete_meter",
    "delete_meter_model",
    "end_assignment",
    "find_household",
    "household_in_scope",
    "household_page_query",
    "households_by_ids",
    "install_meter",
    "mark_meter_faulty",
    "mask_id_number",
    "meter_in_scope",
    "meter_models_by_ids",
    "meter_models_statement",
    "meter_page_query",
    "meters_by_ids",
    "move_area",
    "no_balance",
    "owners_by_household_ids",
    "parse_reading",
    "record_status_change",
    "rename_area",
    "repair_meter",
    "replace_meter",
    "replacements_by_household_ids",
    "save_collector",
    "save_meter_model",
    "set_household_status",
    "set_meter_status",
    "share_area_tree",
    "status_history_by_household_ids",
    "status_history_by_meter_ids",
    "terminal_password",
    "transfer_ownership",
    "uninstall_meter",
    "update_area",
    "update_concentrator",
    "update_household",
    "update_meter",
]
