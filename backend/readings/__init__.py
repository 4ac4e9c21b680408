"""Readings (读数): the partitioned readings store, ingest, latest readings (issue 5)."""

from backend.archives.handover import offer_handover_writer
from backend.readings.handover import store_handover_readings

# Archives' handovers store their register readings through ingest; archives comes first
# in the domain order, so readings offers the writer (backend.archives.handover says why).
offer_handover_writer(store_handover_readings)
