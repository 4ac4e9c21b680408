"""Domain events: the transactional outbox, its relay to jobs, and the listener."""
