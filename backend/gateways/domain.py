"""The gateways layer's declaration: the table of kept exchanges (the pattern itself is
a library, docs/gateways.md; each gateway is declared by the domain that calls it)."""

from __future__ import annotations

from backend.domain import Domain

DOMAIN = Domain(
    name="gateways",
    title="外部网关",
    models=("backend.gateways.models",),
)
