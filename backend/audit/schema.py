"""GraphQL for the operation log (filled in by the audit schema work)."""
