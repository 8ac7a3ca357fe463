"""Headstart's domain logic: events, user state, partitions. Knows nothing of Ray or NATS."""
