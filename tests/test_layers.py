"""STYLE's layering, checked: only ``backend/app.py`` and a domain's ``http.py`` speak HTTP
through starlette; everything else (the edge's plain ASGI guards included) stays free of it."""

from __future__ import annotations

import ast
from functools import cache
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


# --------------------------------------------------------------------------- imports between packages

# DESIGN.md, "Domain order": a domain imports only the domains before it.
DOMAIN_ORDER = ("auth", "archives", "alarms", "readings", "billing", "payments", "notifications", "workorders", "remote", "valves", "zones")
# Shared layers every domain may use; they import no domain but ``auth`` (the first one,
# which holds the principal and data scope they all check against).
SHARED_LAYERS = frozenset({"graphql", "events", "webhooks", "exports", "files", "ops", "audit", "gateways",
                           "calendar"})
# The hosts collect the domains' declarations (see test_hosts_import_no_domain_by_name).
HOSTS = frozenset({"backend.app", "backend.jobs", "backend.cli", "backend.graphql.schema", "backend.demo",
                   "backend.all_models", "backend.checks", "backend.domains", "backend.privacy"})



def _module_name(path: Path) -> str:
    parts = path.relative_to(BACKEND.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _imported_modules(path: Path) -> frozenset[str]:
    """Every module ``path`` imports, at module level or inside a function (relative
    imports resolved; ``from package import name`` counts as importing the package)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.add(node.module)
    return frozenset(names)


@cache
def _packages() -> frozenset[str]:
    """The packages directly under ``backend/``: domains and shared layers alike."""
    return frozenset(path.parent.name for path in BACKEND.glob("*/__init__.py"))


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "backend" and parts[1] in _packages() else None


@cache
def _package_edges() -> dict[tuple[str, str], set[tuple[str, str]]]:
    """(importing package, imported package) → the module pairs behind it."""
    edges: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for path in BACKEND.rglob("*.py"):
        module = _module_name(path)
        source = _package_of(module)
        if source is None or module in HOSTS:
            continue
        for imported in _imported_modules(path):
            target = _package_of(imported)
            if target is None or target == source:
                continue
            edges.setdefault((source, target), set()).add((module, imported))
    return edges


def test_every_package_has_a_place_in_the_layering() -> None:
    assert _packages() - SHARED_LAYERS - set(DOMAIN_ORDER) == set()


def test_no_package_imports_a_later_domain() -> None:
    rank = {name: index for index, name in enumerate(DOMAIN_ORDER)}
    # A shared layer ranks with auth: it may use auth, and no other domain.
    offenders = sorted(
        pair for (source, target), pairs in _package_edges().items() if target in rank
        and rank[target] > rank.get(source, rank["auth"]) for pair in pairs
    )
    assert offenders == []


def test_no_cycle_between_packages() -> None:
    # graphql is the framework every domain's schema builds on (relay, errors,
    # permissions) and the root holding the caller (auth's principal): it wraps the
    # domains rather than sitting among them, so its edges to them are not a cycle.
    edges = {pair: modules for pair, modules in _package_edges().items() if "graphql" not in pair}
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            package = todo.pop()
            if package == goal:
                return True
            if package not in seen:
                seen.add(package)
                todo.extend(graph.get(package, ()))
        return False

    in_a_cycle = {f"{source} -> {target}": sorted(modules) for (source, target), modules in edges.items()
                  if reaches(target, source)}
    assert in_a_cycle == {}


def test_no_package_imports_a_host() -> None:
    """A host collects the domains; a package importing one (``backend.domains``, the
    app…) would depend on every domain through it."""
    offenders = sorted(
        (_module_name(path), imported) for path in BACKEND.rglob("*.py")
        if _package_of(_module_name(path)) is not None and _module_name(path) not in HOSTS
        for imported in _imported_modules(path) if imported in HOSTS
    )
    assert offenders == []


def test_hosts_import_no_domain_by_name() -> None:
    """The app, the job worker, the CLI and the root schema read the domain declarations
    (``backend.domains``) and name no domain, by import or by module path string. auth,
    the shared layer that authenticates every request, they may name."""
    domains = set(DOMAIN_ORDER) - {"auth"}
    offenders: list[tuple[str, str]] = []
    for path in BACKEND.rglob("*.py"):
        module = _module_name(path)
        # backend.domains is the list itself: the one module that names every domain.
        if module not in HOSTS or module == "backend.domains":
            continue
        strings = {node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        for name in _imported_modules(path) | strings:
            if name.split(".")[0] == "backend" and len(name.split(".")) > 1 and name.split(".")[1] in domains:
                offenders.append((module, name))
    assert sorted(offenders) == []


def test_no_schema_module_imports_another_packages_schema() -> None:
    """A domain's GraphQL builds on its own types; another domain's types are reached
    by GraphQL name (extensions) or by module path (``strawberry.lazy``), never imported."""
    offenders = sorted(
        (_module_name(path), imported) for path in BACKEND.rglob("*.py")
        if ".schema" in _module_name(path) and _module_name(path) not in HOSTS
        for imported in _imported_modules(path)
        if ".schema" in imported and _package_of(imported) not in (None, "graphql", _package_of(_module_name(path)))
    )
    assert offenders == []
