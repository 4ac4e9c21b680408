"""STYLE's layering, checked: only ``backend/app.py`` and a domain's ``http.py`` speak HTTP
through starlette; everything else (the edge's plain ASGI guards included) stays free of it."""

from __future__ import annotations

import ast
from pathlib import Path

BACKEND = Path(__file__).resolve().parent.parent / "backend"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_app_and_a_domains_http_module_import_starlette() -> None:
    offenders = sorted(
        str(path.relative_to(BACKEND.parent))
        for path in BACKEND.rglob("*.py")
        if path.name != "http.py" and path != BACKEND / "app.py"
        and any(name == "starlette" or name.startswith("starlette.") for name in _imports(path))
    )
    assert offenders == []
