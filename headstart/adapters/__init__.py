"""NATS adapters: streams, consumers, shard RPC, checkpoints, assignment, status, audit, merge and
membership publishing. They import ``engine`` and nothing above them in ``headstart`` (but the
settings). Every stream, bucket and subject name is in ``topology``; ``provision`` creates the
streams."""
