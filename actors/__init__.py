"""Ray actors and their wiring: shards that own partitions of live user state."""
