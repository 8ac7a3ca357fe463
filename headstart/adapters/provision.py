"""Creating Headstart's streams (and the status bucket) at startup, from each one's configuration.

The configurations live with the modules that use the streams (:mod:`.streams` for events,
dead letters, audit and the learning loop's logs, :mod:`.membership` for segment changes,
:mod:`.status` for the status bucket); this module sits above them, so none of them needs to
import another to be created. The other buckets are opened, and created if missing, by their
users: ``HS_CONTROL`` (:func:`.assignment.control_bucket`), ``HS_LEARN``
(:func:`.merge.learn_bucket`), ``HS_SNAPSHOTS`` (:func:`.checkpoints.ensure_snapshot_bucket`),
``HS_ERASURE`` (:func:`headstart.privacy.erasure.erasure_bucket`), ``HS_ALIASES`` (the
ingress, with its TTL) and ``HS_KEY_USAGE`` (:class:`.key_store.KeyUsage`); the versioned
documents' streams likewise: ``HS_CATALOG`` (:meth:`.catalog_store.CatalogStore.open`) and
``HS_KEYS`` (:meth:`.key_store.KeyStore.open`), both opened by the runtime at start.

Example::

    await ensure_streams(nc.jetstream(), partitions=64, retention=settings.retention)
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from engine.datamap import Retention
from engine.errors import ConfigError
from headstart.adapters.membership import segments_stream_config
from headstart.adapters.status import ensure_status_bucket
from headstart.adapters.streams import (
    audit_stream_config,
    dlq_stream_config,
    events_stream_config,
    record_stream_config,
)
from headstart.adapters.topology import EVENTS_STREAM, RECORD_KINDS


async def ensure_streams(
    js: JetStreamContext, partitions: int, retention: Retention | None = None, replicas: int = 1
) -> None:
    """Create the streams, or update them in place (a changed retention applies to what they
    hold). Changing the partition count is refused: it would move users between partitions
    and split their history."""
    retention = retention or Retention()
    events = events_stream_config(partitions, retention.events_days, replicas)
    try:
        info = await js.stream_info(EVENTS_STREAM)
    except NotFoundError:
        await js.add_stream(events)
    else:
        current = info.config.subject_transform
        if current is not None and current.dest != events.subject_transform.dest:  # type: ignore[union-attr]
            raise ConfigError(
                f"partitions: the stream {EVENTS_STREAM} was created with the mapping "
                f"{current.dest!r}; partitions are fixed for a stream's life (asked for {partitions})"
            )
        await js.update_stream(events)
    await ensure_status_bucket(js)
    for config in (
        dlq_stream_config(retention, replicas),
        segments_stream_config(retention.segment_changes_days, replicas),
        audit_stream_config(retention, replicas),
        *(record_stream_config(kind, retention, replicas) for kind in RECORD_KINDS),
    ):
        try:
            await js.stream_info(config.name)  # type: ignore[arg-type]
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
