"""Auth mutations: each runs through run_mutation (one transaction, an audit sentence,
typed payload errors); the services check grants and the data scope.

Grouped per resource, one module each (sign-in, household bindings, staff users, roles,
API clients) rather than one module per mutation: the 23 mutations are a few lines each
around a shared runner, and a reader looking for "how is a role changed" wants that
resource's inputs, payload and mutations side by side; 23 files of 15 lines would scatter
them. ``Mutation`` merges the resources' parts in the order the API has always listed them."""

from __future__ import annotations

from strawberry.tools import merge_types

from backend.auth.schema.mutations.api_clients import ApiClientMutations
from backend.auth.schema.mutations.bindings import BindingMutations
from backend.auth.schema.mutations.roles import RoleMutations
from backend.auth.schema.mutations.sign_in import SignInMutations
from backend.auth.schema.mutations.staff_users import StaffUserMutations

Mutation = merge_types(
    "Mutation",
    (SignInMutations, BindingMutations, StaffUserMutations, RoleMutations, ApiClientMutations),
)

__all__ = ["Mutation"]
