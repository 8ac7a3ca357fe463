"""Runtime settings, from environment variables (``HEADSTART_*``) and command-line flags.

>>> s = Settings(partitions=8, shards=2)
>>> s.partitions, s.shards, s.port
(8, 2, 8000)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.datamap import Retention
from engine.pii import DEFAULT_PII_FIELDS
from headstart.adapters.broker import NatsAuth
from headstart.web.identity import DEFAULT_ANONYMOUS_PREFIX, VerificationMode


class Settings(BaseSettings):
    """Everything an operator can set. Defaults run a complete engine on one machine."""

    model_config = SettingsConfigDict(env_prefix="HEADSTART_", extra="forbid", frozen=True)

    home: Path = Field(Path(".headstart"), description="data home: broker store, keys, logs, pids")
    nats_url: str | None = Field(None, description="an existing NATS server; unset starts the embedded one")
    nats_user: str | None = Field(None, description="NATS user (with nats_password)")
    nats_password: SecretStr | None = Field(None, description="NATS password")
    nats_token: SecretStr | None = Field(None, description="NATS authentication token")
    nats_nkey_seed: Path | None = Field(None, description="file holding the NATS nkey seed to sign in with")
    nats_credentials: Path | None = Field(
        None, description="NATS .creds file (user JWT and seed: decentralized auth)"
    )
    nats_port: int = Field(0, ge=0, le=65535, description="embedded broker port; 0 picks a free one")
    partitions: int = Field(64, ge=1, le=4096, description="fixed number of partitions of the event stream")
    shards: int = Field(2, ge=1, le=256, description="number of shard actors")
    shard_num_cpus: float = Field(
        0.5, gt=0, description="Ray CPUs reserved per shard (a shard is one event loop: at most one core)"
    )
    host: str = Field("127.0.0.1", description="HTTP bind address")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port")
    secret: SecretStr | None = Field(None, description="pseudonymization secret; else <home>/secret")
    pii_fields: tuple[str, ...] = Field(
        DEFAULT_PII_FIELDS,
        description="event props and context fields that are PII: redacted from dead letters (JSON list)",
    )
    event_retention_days: float = Field(30.0, gt=0, description="how long raw events stay in the stream")
    decision_retention_days: float = Field(
        90.0, gt=0, description="how long the decisions and rewards logs are kept (what evaluation replays)"
    )
    segment_change_retention_days: float = Field(
        1.0, gt=0, description="how long published segment changes wait in HS_SEGMENTS for subscribers"
    )
    dead_letter_retention_days: float = Field(30.0, gt=0, description="how long dead letters are kept")
    audit_retention_days: float = Field(365.0, gt=0, description="how long the audit log is kept")
    profile_retention_days: float = Field(
        365.0, gt=0, description="a profile inactive this long (by its partition's event time) is deleted"
    )
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas (3 on a NATS cluster)")
    serve_mode: Literal["haproxy", "default"] = Field(
        "haproxy", description="Serve HTTP front: HAProxy + throughput-optimized (fast) or Serve's proxy"
    )
    ray_address: str | None = Field(
        None, description="join this Ray cluster ('auto' on a cluster node); unset starts a local Ray"
    )
    checkpoint_interval_s: float = Field(
        30.0, gt=0, description="how often shards snapshot changed partitions to the object store"
    )
    catalog: Path | None = Field(None, description="onboarding catalog YAML; unset: the packaged default")
    ingress_min_replicas: int = Field(
        1, ge=1, le=64, description="Serve autoscaling: fewest ingress replicas"
    )
    ingress_max_replicas: int = Field(
        1, ge=1, le=64, description="Serve autoscaling: most ingress replicas (1: a fixed single replica)"
    )
    ingress_target_ongoing_requests: float = Field(
        64.0, gt=0, description="Serve autoscaling: requests in flight per replica before it adds one"
    )
    frontend_rate_limit: str = Field(
        "20000/second",
        description="requests per frontend key and ingress replica (a product's traffic shares its key)",
    )
    server_rate_limit: str = Field(
        "20000/second", description="requests per server key (a product's backend) and ingress replica"
    )
    admin_rate_limit: str = Field("200/second", description="requests per admin key and ingress replica")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="origins whose pages may call the API from a browser, comma-separated "
        "(e.g. https://app.example.com); none: only the same origin",
    )
    identity_verification: VerificationMode = Field(
        "off",
        description="off / optional / required: whether a frontend-key request naming a user must carry "
        "user_hash = hex(HMAC-SHA256(identity secret, user_id))",
    )
    identity_secret: SecretStr | None = Field(
        None, description="the identity verification secret; else <home>/identity_secret, generated once"
    )
    anonymous_prefix: str = Field(
        DEFAULT_ANONYMOUS_PREFIX,
        min_length=1,
        max_length=32,
        description="user ids starting with this are anonymous visitors: no user_hash needed",
    )
    grpc_port: int = Field(
        0, ge=0, le=65535, description="the gRPC decision service's port (0: a free one, chosen at start)"
    )
    segment_prefix: str = Field(
        "/segment",
        pattern=r"^(/[A-Za-z0-9_\-]+)+$",
        description="where the Segment-compatible tracking API is served (<prefix>/v1/batch, ...)",
    )
    restart_limit: int = Field(
        6,
        ge=1,
        le=100,
        description="deaths in a row of a child of the supervisor (each soon after its start) "
        "before it gives up",
    )
    fetch_batch: int = Field(
        256, ge=16, le=65536, description="messages per pull request, per partition; two are kept in flight"
    )

    @model_validator(mode="after")
    def _replica_bounds(self) -> Settings:
        if self.ingress_min_replicas > self.ingress_max_replicas:
            raise ValueError("ingress_min_replicas must not exceed ingress_max_replicas")
        return self

    def nats_auth(self) -> NatsAuth:
        return NatsAuth(
            user=self.nats_user,
            password=self.nats_password,
            token=self.nats_token,
            nkey_seed=self.nats_nkey_seed,
            credentials=self.nats_credentials,
        )

    @field_validator("nats_url")
    @classmethod
    def _no_password_in_url(cls, value: str | None) -> str | None:
        # The URL is printed and recorded in the home's state file; a secret must not be.
        if value is not None and "@" in value.split("//", 1)[-1].split("/", 1)[0]:
            raise ValueError("give NATS credentials as nats_user/nats_password or nats_token, not in the URL")
        return value

    @field_validator("nats_nkey_seed", "nats_credentials")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = value.expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{path} is not a file")
        return path

    @model_validator(mode="after")
    def _password_needs_user(self) -> Settings:
        if (self.nats_password is None) != (self.nats_user is None):
            raise ValueError("nats_user and nats_password go together")
        return self

    def retention(self) -> Retention:
        return Retention(
            events_days=self.event_retention_days,
            decisions_days=self.decision_retention_days,
            segment_changes_days=self.segment_change_retention_days,
            dead_letters_days=self.dead_letter_retention_days,
            audit_days=self.audit_retention_days,
            profiles_days=self.profile_retention_days,
        )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError("give origins as a comma-separated list, e.g. https://app.example.com")
        origins = []
        for item in (str(i).strip().rstrip("/") for i in items):
            if not item:
                continue
            parts = urlsplit(item)
            if item != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
                raise ValueError(
                    f"{item!r} is not an origin: write scheme://host[:port], e.g. https://app.example.com"
                )
            origins.append(item)
        return tuple(origins)

    @field_validator("frontend_rate_limit", "server_rate_limit", "admin_rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from headstart.web.auth import parse_rate_limit

        parse_rate_limit(value)
        return value

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        # Actors run in other working directories: the home must not depend on the cwd.
        return value.expanduser().resolve()
