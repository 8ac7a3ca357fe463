"""What an ingress replica is given: built by the runtime, passed to every replica."""

from __future__ import annotations

from pydantic import BaseModel, Field

from actors.ingress.middleware import SEGMENT_PREFIX
from engine.catalog import Catalog
from headstart.adapters.broker import NatsAuth
from headstart.web.identity import DEFAULT_ANONYMOUS_PREFIX, VerificationMode


class IngressConfig(BaseModel):
    """What the ingress needs; built by the runtime, passed to every replica."""

    nats_url: str
    partitions: int
    #: Not in the config's repr: a config that is logged or shown in an error names no secret.
    secret: bytes = Field(repr=False)
    #: The keys accepted until the replica reads the key store (hashes by role): the store's
    #: at start (see actors/ingress/live_keys.py).
    key_hashes: dict[str, list[str]]
    #: When keys in a rotation's grace period stop working (by hash; Unix seconds).
    key_expiries: dict[str, float] = {}
    catalog: Catalog
    #: The stored version ``catalog`` is (live: the replica serves the store's latest version and
    #: follows it); 0: a catalog handed over directly, served until a version is stored through
    #: this replica (``PUT /v1/catalog``).
    catalog_version: int = 0
    #: JetStream replicas of the catalog's stream, if the ingress is the first to create it.
    stream_replicas: int = 1
    nats_auth: NatsAuth = NatsAuth()
    #: Requests per key of each role and replica, e.g. ``{"frontend": "20000/second"}``.
    rate_limits: dict[str, str] = {}
    #: Where the Segment-compatible tracking API is served.
    segment_prefix: str = SEGMENT_PREFIX
    #: Origins whose pages may call the API from a browser (CORS); ``*`` any.
    cors_origins: tuple[str, ...] = ()
    #: Whether frontend-key requests naming a user carry its ``user_hash`` (HMAC under the secret).
    identity_verification: VerificationMode = "off"
    identity_secret: bytes = Field(b"", repr=False)
    anonymous_prefix: str = DEFAULT_ANONYMOUS_PREFIX
    #: How long aliases (anonymous id -> user) are kept: as long as the events.
    events_retention_days: float = 30.0
