"""The GraphQL layer: one strawberry schema merged from the domains' ``schema`` modules,
served by our own Starlette endpoint with cached parsing and validation, request limits,
typed errors and per-request DataLoaders."""
