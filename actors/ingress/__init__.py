"""The HTTP (and gRPC) API: a Ray Serve deployment with a FastAPI ingress.

- :mod:`~actors.ingress.routes`: the routes (the :class:`Ingress` deployment)
- :mod:`~actors.ingress.application`: the FastAPI ``app``, its error handlers and OpenAPI document
- :mod:`~actors.ingress.live_catalog`: everything derived from the catalog, as one view of one
  stored version, swapped whole when a new version is stored
- :mod:`~actors.ingress.catalog_routes`: ``/v1/catalog`` (read, store, history)
- :mod:`~actors.ingress.schemas`: every request and answer body, once, and the OpenAPI document
- :mod:`~actors.ingress.middleware`: the ASGI front (body limit, the ``/v1/decide`` fast path)
- :mod:`~actors.ingress.cors`: CORS, before everything else (allowed origins, preflights)
- :mod:`~actors.ingress.shards`: every question asked of a shard or of the local decider
- :mod:`~actors.ingress.admin`: reports gathered from every shard, and the metrics scrape
- :mod:`~actors.ingress.segment`: the Segment-compatible tracking API's ingestion
- :mod:`~actors.ingress.grpc_service`: the gRPC decision service over the same paths
- :mod:`~actors.ingress.errors`: the one error shape

The path from a request to the user's shard is one NATS request/reply to
``hs.rpc.<partition>.<method>``: NATS routes it to whichever shard owns the partition, the shard
answers from its event loop (so it reflects every event it has applied) and replies with the
JSON body, which is passed through as it is; see ``bench/decide.py`` for what it costs.
"""

from actors.ingress.application import app
from actors.ingress.config import IngressConfig
from actors.ingress.middleware import SEGMENT_PREFIX, HotPath
from actors.ingress.routes import GC_GEN0_THRESHOLD, Ingress

__all__ = ["GC_GEN0_THRESHOLD", "SEGMENT_PREFIX", "HotPath", "Ingress", "IngressConfig", "app"]
