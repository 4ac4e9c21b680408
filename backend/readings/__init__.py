"""Readings (读数): the partitioned readings store, ingest, latest readings (issue 5)."""
