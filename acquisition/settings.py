"""The acquisition worker's settings (``shuiwu acquire``), read from ``SHUIWU_ACQUIRE_*``.

A group of its own, as the domains' settings groups are (``backend.domain.read_settings``
reads it and turns a bad value into one line naming it), so the API and the job worker
never load them.
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AcquireSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHUIWU_ACQUIRE_", extra="ignore", frozen=True)

    # A lease lasts this long unless renewed; a killed worker's links are taken over
    # this long after its last renewal at the latest.
    lease_ttl_s: float = Field(default=30.0, gt=0)
    # Renewed (and free or expired links looked for) this often: well inside the TTL,
    # so one slow round does not lose a link.
    renew_interval_s: float = Field(default=10.0, gt=0)
    # Each bus looks for queued commands this often when nothing woke it (a NOTIFY of a
    # queued command wakes it at once).
    poll_interval_s: float = Field(default=1.0, gt=0)
    # ... and this often while the events channel is followed (every way a command enters
    # the queue notifies its link's bus, so polling is only the safety net): 32 idle
    # buses polling every second would cost the database more than the patrols.
    listening_poll_interval_s: float = Field(default=10.0, gt=0)
    # Each bus claims up to this many of its queued commands at a time (one round trip
    # for several meters; what it holds unstarted is given back when it stops).
    claim_ahead: int = Field(default=8, ge=1, le=256)
    # Results are recorded in batches by this many recorders, each for a share of the
    # buses (their transactions run side by side).
    recorders: int = Field(default=4, ge=1, le=16)
    # At most this many links (buses and DTUs) per worker: the rest are left to others.
    max_links: int = Field(default=64, ge=1, le=1024)
    # How long a meter may take to answer (after its request's own line time); per meter
    # model later. The inter-byte timeout absent: twenty byte times, at least 20 ms.
    response_timeout_s: float = Field(default=1.0, gt=0)
    inter_byte_timeout_s: float | None = Field(default=None, gt=0)
    # Tries after the first, within one exchange, for a timeout or a bad frame (never for
    # a valve command: see acquisition.commands).
    exchange_retries: int = Field(default=2, ge=0, le=10)
    # Waits between reopening a port that is gone: doubling from the first to the last.
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # Follow the events channel (LISTEN) so a queued command wakes its bus at once.
    listen: bool = True
    # NB-IoT meters over MQTT (acquisition.mqtt), when SHUIWU_MQTT_URL names a broker: the
    # uplink topics subscribed to (a meter's ``mqtt_topic`` is one of them; its downlinks go
    # to the same topic with a last level ``up`` replaced by ``down``), the shared
    # subscription's group (``$share/<group>/<filter>``: each uplink reaches one worker),
    # and how long a device that was sent a command may take to answer (it listens
    # for a few seconds after each uplink).
    mqtt_topic_filter: str = Field(default="shuiwu/meters/+/up", min_length=1)
    mqtt_share_group: str = Field(default="shuiwu", min_length=1, pattern=r"^[^/+#]+$")
    mqtt_reply_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("renew_interval_s")
    @classmethod
    def _renewed_in_time(cls, value: float, info: ValidationInfo) -> float:
        ttl = info.data.get("lease_ttl_s")
        if ttl is not None and value >= ttl:
            raise ValueError(f"must be shorter than the lease TTL ({ttl} s)")
        return value
