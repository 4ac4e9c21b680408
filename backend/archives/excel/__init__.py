"""Excel sheets of the archives (档案导入导出): households, meters, concentrators and meter
assignments, each with its column list, its export query and its all-or-nothing import.

Every import validates the whole file first (cells by the parsers, then row rules in
Python with the service layer's own patterns, then references and scope against the
database on the rows still valid), and only then writes once, set-based, keyed on the
sheet's natural key: the validated rows go by COPY into a temporary table, and one
``INSERT … ON CONFLICT`` inserts (and, with ``update_existing``, updates only rows that
differ), so re-importing the same file changes nothing. The generic sheet machinery
(upload limits, parsing, writing workbooks) is backend.exports.excel.

The package is the archives' one Excel surface: the HTTP routes (backend.archives.http),
the bench and the tests import ``backend.archives.excel``; this ``__init__`` re-exports
every public name, so the split is invisible to them, as for backend.archives.service.
Inside, one module per sheet: :mod:`.areas` (the tree by parent code), :mod:`.households`,
:mod:`.meters`, :mod:`.concentrators` and :mod:`.assignments` (配表); and what the sheets share: :mod:`.cells` (cell parsers
and labels), :mod:`.exporting` (the device lists' export filter and the streaming of rows
through a server-side cursor) and :mod:`.importing` (the import result, the temporary
table, area references, row errors, the upsert clause and the same-subtree locks).
"""

from __future__ import annotations

from backend.archives.excel.areas import (
    AREA_COLUMNS,
    AREA_KINDS,
    AREA_SHEET,
    area_export_rows,
    import_areas,
)
from backend.archives.excel.assignments import (
    ASSIGNMENT_COLUMNS,
    ASSIGNMENT_SHEET,
    EXISTS_DIFFERENT,
    ONE_HOUSEHOLD_AT_A_TIME,
    UNKNOWN_HOUSEHOLD,
    UNKNOWN_METER,
    assignment_export_rows,
    import_assignments,
)
from backend.archives.excel.cells import (
    moment,
)
from backend.archives.excel.concentrators import (
    CONCENTRATOR_COLUMNS,
    CONCENTRATOR_EXPORT_SHEET,
    CONCENTRATOR_OUT_OF_SCOPE,
    CONCENTRATOR_SHEET,
    CONNECTION_KINDS,
    DEVICE_STATUSES,
    concentrator_export_rows,
    import_concentrators,
)
from backend.archives.excel.exporting import (
    DeviceExportFilter,
)
from backend.archives.excel.households import (
    CUSTOMER_TYPES,
    HOUSEHOLD_COLUMNS,
    HOUSEHOLD_EXPORT_SHEET,
    HOUSEHOLD_SHEET,
    HOUSEHOLD_STATUSES,
    NOT_EXPORTED,
    OUT_OF_SCOPE_HOUSEHOLD,
    HouseholdExportFilter,
    household_export_rows,
    import_households,
)
from backend.archives.excel.importing import (
    CROSS_AREA,
    OUT_OF_SCOPE_AREA,
    ImportResult,
)
from backend.archives.excel.meters import (
    ADDRESS_TAKEN,
    METER_COLUMNS,
    METER_KINDS,
    METER_OUT_OF_SCOPE,
    METER_SHEET,
    METER_STATUSES,
    METER_TYPES,
    UNKNOWN_COLLECTOR,
    UNKNOWN_CONCENTRATOR,
    UNKNOWN_MODEL,
    import_meters,
    meter_export_rows,
)

__all__ = [
    "ADDRESS_TAKEN",
    "AREA_COLUMNS",
    "AREA_KINDS",
    "AREA_SHEET",
    "ASSIGNMENT_COLUMNS",
    "ASSIGNMENT_SHEET",
    "CONCENTRATOR_COLUMNS",
    "CONCENTRATOR_EXPORT_SHEET",
    "CONCENTRATOR_OUT_OF_SCOPE",
    "CONCENTRATOR_SHEET",
    "CONNECTION_KINDS",
    "CROSS_AREA",
    "CUSTOMER_TYPES",
    "DEVICE_STATUSES",
    "EXISTS_DIFFERENT",
    "HOUSEHOLD_COLUMNS",
    "HOUSEHOLD_EXPORT_SHEET",
    "HOUSEHOLD_SHEET",
    "HOUSEHOLD_STATUSES",
    "METER_COLUMNS",
    "METER_KINDS",
    "METER_OUT_OF_SCOPE",
    "METER_SHEET",
    "METER_STATUSES",
    "METER_TYPES",
    "NOT_EXPORTED",
    "ONE_HOUSEHOLD_AT_A_TIME",
    "OUT_OF_SCOPE_AREA",
    "OUT_OF_SCOPE_HOUSEHOLD",
    "UNKNOWN_COLLECTOR",
    "UNKNOWN_CONCENTRATOR",
    "UNKNOWN_HOUSEHOLD",
    "UNKNOWN_METER",
    "UNKNOWN_MODEL",
    "DeviceExportFilter",
    "HouseholdExportFilter",
    "ImportResult",
    "area_export_rows",
    "assignment_export_rows",
    "concentrator_export_rows",
    "household_export_rows",
    "import_areas",
    "import_assignments",
    "import_concentrators",
    "import_households",
    "import_meters",
    "meter_export_rows",
    "moment",
]
