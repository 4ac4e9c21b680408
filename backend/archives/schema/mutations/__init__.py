"""Archive mutations: each runs through run_mutation (one transaction, an audit sentence,
typed payload errors) and requires archives:manage; services apply the data scope.

Grouped per resource, one module each (areas, households, meters, a meter's life cycle,
assignments, devices, meter models, monitoring stations) rather than one module per mutation: the 28 mutations
are a few lines each around a shared runner, and a reader looking for "how is a meter
changed" wants that resource's inputs, payload and mutations side by side; 28 files of 15
lines would scatter them. ``Mutation`` merges the resources' parts in the order the API has always listed them."""

from __future__ import annotations

from strawberry.tools import merge_types

from backend.archives.schema.mutations.areas import AreaMutations
from backend.archives.schema.mutations.assignments import AssignmentMutations
from backend.archives.schema.mutations.devices import DeviceMutations
from backend.archives.schema.mutations.households import HouseholdMutations
from backend.archives.schema.mutations.life_cycle import LifeCycleMutations
from backend.archives.schema.mutations.meter_models import MeterModelMutations
from backend.archives.schema.mutations.meters import MeterMutations
from backend.archives.schema.mutations.stations import StationMutations

Mutation = merge_types(
    "Mutation",
    (AreaMutations, HouseholdMutations, MeterMutations, LifeCycleMutations, AssignmentMutations, DeviceMutations,
     MeterModelMutations, StationMutations),
)

__all__ = ["Mutation"]
