"""The gateways layer's declaration: the table of kept exchanges (the pattern itself is
a library, docs/gateways.md; each gateway is declared by the domain that calls it)."""

from __future__ import annotations

from backend.domain import Domain, PersonalData

DOMAIN = Domain(
    name="gateways",
    title="外部网关",
    models=("backend.gateways.models",),
    personal_data=PersonalData(excluded={
        "gateway_exchanges.request": "calls of the gateways that move money (keeps_exchanges); none is installed "
                                     "yet, and the domain that installs one declares what its calls hold",
        "gateway_exchanges.response": "as request",
    }),
)
