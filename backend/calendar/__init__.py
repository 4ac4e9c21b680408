"""The holiday calendar (节假日与调休): a shared platform layer (backend.calendar.service)."""
