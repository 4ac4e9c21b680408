"""Auth: staff users, roles, permissions, data scope, residents and API clients."""
