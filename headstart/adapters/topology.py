"""Every JetStream stream, key-value bucket, object store and subject Headstart uses, by name.

One place for the names that cross process boundaries, so that a producer, a shard, a report
and an erasure cannot disagree on where something lives. It imports nothing but ``typing``:
any layer may read it.

Events come in on ``hs.ingest.<user_key>``; the ``HS_EVENTS`` stream maps that, inside the
server, to ``hs.events.<partition>.<user_key>``. The learning loop's records of a user go to
the same partition, in the same last token (``<user_key>-decision``, ``-reward``,
``-exposure``), and to a log of their kind:

>>> ingest_subject("k1")
'hs.ingest.k1'
>>> record_subjects(3, "k1", "decision")
('hs.events.3.k1-decision', 'hs.decisions.3.k1')
>>> partition_subject(3), changes_subject(3), dead_letter_subject("events", 3)
('hs.events.3.*', 'hs.segments.3', 'hs.dlq.events.3')
>>> rpc_subject(3, "decide"), batch_subject(1)
('hs.rpc.3.decide', 'hs.rpc.shard.1.batch')
>>> kv_stream(CONTROL_BUCKET), object_stream(SNAPSHOT_BUCKET)
('KV_HS_CONTROL', 'OBJ_HS_SNAPSHOTS')
"""

from __future__ import annotations

from typing import Final

# -- Streams and the subjects they hold --------------------------------------------------------

#: Every event, partitioned by user key (``hs.ingest.*`` mapped to ``hs.events.<p>.*``).
EVENTS_STREAM: Final = "HS_EVENTS"
INGEST_PREFIX: Final = "hs.ingest"
EVENTS_PREFIX: Final = "hs.events"
#: What could not be applied: the original bytes and the reason (``hs.dlq.<source>...``).
DLQ_STREAM: Final = "HS_DLQ"
DLQ_PREFIX: Final = "hs.dlq"
#: The learning loop's and the experiments' logs, one stream per kind of record.
DECISIONS_STREAM: Final = "HS_DECISIONS"
DECISIONS_PREFIX: Final = "hs.decisions"
REWARDS_STREAM: Final = "HS_REWARDS"
REWARDS_PREFIX: Final = "hs.rewards"
EXPOSURES_STREAM: Final = "HS_EXPOSURES"
EXPOSURES_PREFIX: Final = "hs.exposures"
#: Who did what, when (``hs.audit.<what>``).
AUDIT_STREAM: Final = "HS_AUDIT"
AUDIT_PREFIX: Final = "hs.audit"
#: Users entering and leaving segments, in batches per partition (``hs.segments.<partition>``).
SEGMENTS_STREAM: Final = "HS_SEGMENTS"
SEGMENTS_PREFIX: Final = "hs.segments"

#: The records of the learning loop and of experiments, by the subject token after the user's
#: key: the stream that logs them and its subject prefix.
RECORD_KINDS: Final[dict[str, tuple[str, str]]] = {
    "decision": (DECISIONS_STREAM, DECISIONS_PREFIX),
    "reward": (REWARDS_STREAM, REWARDS_PREFIX),
    "exposure": (EXPOSURES_STREAM, EXPOSURES_PREFIX),
}

#: Every version of the catalog, one message each, its sequence the version number
#: (:mod:`headstart.adapters.catalog_store`).
CATALOG_STREAM: Final = "HS_CATALOG"
CATALOG_SUBJECT: Final = "hs.catalog.versions"
#: The API keys an instance accepts: each message the whole key set, the last few hundred kept
#: (:mod:`headstart.adapters.key_store`).
KEYS_STREAM: Final = "HS_KEYS"
KEYS_SUBJECT: Final = "hs.keys.set"

#: Every stream Headstart creates (:func:`headstart.adapters.provision.ensure_streams`).
STREAMS: Final = (
    EVENTS_STREAM,
    DLQ_STREAM,
    DECISIONS_STREAM,
    REWARDS_STREAM,
    EXPOSURES_STREAM,
    SEGMENTS_STREAM,
    AUDIT_STREAM,
)

# -- Key-value buckets and object stores -------------------------------------------------------

#: Which shard owns each partition (key ``assignment``).
CONTROL_BUCKET: Final = "HS_CONTROL"
#: Each partition's contribution to the policies, drifts forgotten, the cluster model.
LEARN_BUCKET: Final = "HS_LEARN"
#: What each shard and the webhook actor report every second (in memory, entries expire).
STATUS_BUCKET: Final = "HS_STATUS"
#: Erasures in progress and done, by user key.
ERASURE_BUCKET: Final = "HS_ERASURE"
#: The Segment API's anonymous ids and aliases, mapped to users.
ALIASES_BUCKET: Final = "HS_ALIASES"
#: When each API key was last used (key: the key's id; value: Unix seconds), kept by the ingress.
KEY_USAGE_BUCKET: Final = "HS_KEY_USAGE"
#: Partition snapshots (an object store: ``partition-<p>``).
SNAPSHOT_BUCKET: Final = "HS_SNAPSHOTS"

# -- Other subjects ----------------------------------------------------------------------------

#: Operator requests to the supervisor (``hs.admin.<action>``).
ADMIN_PREFIX: Final = "hs.admin"
#: Requests to the shard that owns a partition (:mod:`headstart.adapters.rpc`): NATS routes
#: ``hs.rpc.<partition>.<method>`` to the current owner, and a shard takes batches of requests
#: on ``hs.rpc.shard.<id>.batch``.
RPC_PREFIX: Final = "hs.rpc"


def ingest_subject(user_key: str) -> str:
    """Where a producer publishes a user's event."""
    return f"{INGEST_PREFIX}.{user_key}"


def partition_subject(partition: int) -> str:
    """The subject filter of one partition's messages: events and the learning loop's records."""
    return f"{EVENTS_PREFIX}.{partition}.*"


def user_subject(partition: int, user_key: str, suffix: str = "") -> str:
    """A user's messages in its partition: events, or with ``suffix`` (``-decision``, ``-erase``,
    ...) one kind of record."""
    return f"{EVENTS_PREFIX}.{partition}.{user_key}{suffix}"


def record_log_subject(kind: str, partition: int, user_key: str) -> str:
    """A user's record of ``kind`` in its log (``hs.decisions.<partition>.<user_key>``, ...)."""
    return f"{RECORD_KINDS[kind][1]}.{partition}.{user_key}"


def record_subjects(partition: int, user_key: str, kind: str) -> tuple[str, str]:
    """Where a record of a user goes (``kind``: ``decision``, ``reward`` or ``exposure``): the
    user's partition, and the log of its kind."""
    return user_subject(partition, user_key, f"-{kind}"), record_log_subject(kind, partition, user_key)


def changes_subject(partition: int) -> str:
    """Where one partition's segment changes are published."""
    return f"{SEGMENTS_PREFIX}.{partition}"


def dead_letter_subject(source: str, *tokens: int | str) -> str:
    """Where a message that could not be applied goes: ``hs.dlq.events.<partition>`` for the
    consumer's, ``hs.dlq.segment`` for the Segment API's."""
    return ".".join((DLQ_PREFIX, source, *map(str, tokens)))


def audit_subject(what: str) -> str:
    return f"{AUDIT_PREFIX}.{what}"


def admin_subject(action: str) -> str:
    return f"{ADMIN_PREFIX}.{action}"


def rpc_subject(partition: int, method: str) -> str:
    """``hs.rpc.<partition>.<method>`` (a shard subscribes ``method`` ``*``)."""
    return f"{RPC_PREFIX}.{partition}.{method}"


def batch_subject(shard: int) -> str:
    """Where a shard takes several requests in one message (its coalesced decisions)."""
    return f"{RPC_PREFIX}.shard.{shard}.batch"


def kv_stream(bucket: str) -> str:
    """The stream that holds a key-value bucket (JetStream's naming)."""
    return f"KV_{bucket}"


def object_stream(bucket: str) -> str:
    """The stream that holds an object store (JetStream's naming)."""
    return f"OBJ_{bucket}"


# -- Consumer names ----------------------------------------------------------------------------


def partition_consumer_prefix(partition: int) -> str:
    """The start of every name of a partition's consumer (a random suffix follows)."""
    return f"hs-p{partition}-"


def webhook_consumer(webhook_id: str) -> str:
    """The durable consumer of ``HS_SEGMENTS`` that feeds one webhook."""
    return f"hs-webhook-{webhook_id}"
