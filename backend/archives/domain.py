"""The archives' declaration (档案管理): areas, households, meters, devices, assignments."""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Check, Domain

DOMAIN = Domain(
    name="archives",
    title="档案管理",
    models=("backend.archives.models",),
    schema="backend.archives.schema",
    routes="backend.archives.http:routes",
    menus=(
        Menu("archives", "档案管理", "Archives", (
            _p("archives:read", "查看档案", "View archives"),
            _p("archives:manage", "维护档案", "Maintain archives"),
        )),
    ),
    demo_grants={"cashier": frozenset({"archives:read"}), "repair": frozenset({"archives:read"})},
    operations=(
        Operation("createArea", "新增区域", "Create area", "archives"),
        Operation("updateArea", "修改区域", "Update area", "archives"),
        Operation("renameArea", "重命名区域", "Rename area", "archives"),
        Operation("moveArea", "移动区域", "Move area", "archives"),
        Operation("deleteArea", "删除区域", "Delete area", "archives"),
        Operation("createHousehold", "新增住户", "Create household", "archives"),
        Operation("updateHousehold", "修改住户", "Update household", "archives"),
        Operation("setHouseholdStatus", "变更住户状态", "Change household status", "archives"),
        Operation("transferOwnership", "过户", "Transfer ownership", "archives"),
        Operation("deleteHousehold", "删除住户", "Delete household", "archives"),
        Operation("createMeter", "新增水表", "Create meter", "archives"),
        Operation("updateMeter", "修改水表", "Update meter", "archives"),
        Operation("retireMeter", "报废水表", "Retire meter", "archives"),
        Operation("deleteMeter", "删除水表", "Delete meter", "archives"),
        Operation("installMeter", "安装水表", "Install meter", "archives"),
        Operation("uninstallMeter", "拆回水表", "Uninstall meter", "archives"),
        Operation("markMeterFaulty", "水表报故障", "Mark meter faulty", "archives"),
        Operation("repairMeter", "水表修复", "Repair meter", "archives"),
        Operation("assignMeter", "配表", "Assign meter", "archives"),
        Operation("endMeterAssignment", "解除配表", "End meter assignment", "archives"),
        Operation("replaceMeter", "换表", "Replace meter", "archives"),
        Operation("createConcentrator", "新增集中器", "Create concentrator", "archives"),
        Operation("updateConcentrator", "修改集中器", "Update concentrator", "archives"),
        Operation("deleteConcentrator", "删除集中器", "Delete concentrator", "archives"),
        Operation("saveCollector", "保存采集器", "Save collector", "archives"),
        Operation("deleteCollector", "删除采集器", "Delete collector", "archives"),
        Operation("saveMeterModel", "保存水表型号", "Save meter model", "archives"),
        Operation("deleteMeterModel", "删除水表型号", "Delete meter model", "archives"),
        Operation("exportHouseholds", "导出住户", "Export households", "archives"),
        Operation("importHouseholds", "导入住户", "Import households", "archives"),
        Operation("exportMeters", "导出水表", "Export meters", "archives"),
        Operation("importMeters", "导入水表", "Import meters", "archives"),
        Operation("exportConcentrators", "导出集中器", "Export concentrators", "archives"),
        Operation("importConcentrators", "导入集中器", "Import concentrators", "archives"),
        Operation("exportAssignments", "导出表计分配", "Export assignments", "archives"),
        Operation("importAssignments", "导入表计分配", "Import assignments", "archives"),
        Operation("exportAreas", "导出区域", "Export areas", "archives"),
        Operation("importAreas", "导入区域", "Import areas", "archives"),
    ),
    checks=(Check("archives.cross_area", "backend.archives.checks:no_cross_area_assignments",
                  "Open assignments stay within their meter's area"),),
    demo="backend.archives.demo:load_archives",
    commands={"admin": "backend.archives.cli:admin_app"},
)
