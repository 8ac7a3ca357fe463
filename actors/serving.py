"""Starting the Serve application, with the deployment settings Headstart ships with.

Serve's default Python proxy was many times slower per request and collapsed under a few dozen
clients; HAProxy in front of the replica (``RAY_SERVE_ENABLE_HA_PROXY=1``) with the
throughput-optimized mode is what keeps a no-op endpoint fast (figures: bench/RESULTS.md). HAProxy's
own metrics parsing costs a sizeable share of a core, so it is off. These variables must be in the
environment before Ray starts: the runtime sets them before ``ray.init``.
"""

from __future__ import annotations

import os
from typing import Any

from engine.catalog import Catalog
from headstart.settings import Settings

SERVE_MODES: dict[str, dict[str, str]] = {
    "haproxy": {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        # Replicas otherwise wait 30 s before they stop: too long for `down` and for tests.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
    },
    "default": {},
}
#: In every mode: Serve's controller checks each proxy this often and replaces one after three
#: failed checks. HAProxy runs under its proxy: killed, it was back after ~29 s with Ray's
#: 10 s period; a check is one call to a local actor, cheap every 2 s.
SERVE_HEALTH = {"RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "2"}
APP_NAME = "headstart"
#: Serve's gRPC proxy adds this service; the ingress deployment implements its methods.
GRPC_SERVICER = "headstart.protos.headstart_pb2_grpc.add_DecisionServiceServicer_to_server"


#: HAProxy's stats and Prometheus listeners use fixed ports (8404, 9101) unless told otherwise,
#: so two instances on one machine collide. Each instance gets free ones. Ray's template binds
#: these two on all interfaces (not configurable in Ray 2.60); the API itself binds
#: ``Settings.host`` (loopback by default).
HAPROXY_PORT_VARIABLES = ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")


def apply_serve_environment(mode: str) -> None:
    """Set the Serve variables of ``mode`` in this process's environment (before ray.init)."""
    from headstart.adapters.broker import free_port

    for key, value in {**SERVE_HEALTH, **SERVE_MODES[mode]}.items():
        os.environ.setdefault(key, value)
    if mode == "haproxy":
        # Bound later, once Ray is up: chosen where Ray and the OS do not hand out ports.
        for key in HAPROXY_PORT_VARIABLES:
            os.environ[key] = str(free_port())


def start_app(
    settings: Settings,
    nats_url: str,
    catalog: Catalog,
    secret: bytes,
    key_hashes: dict[str, list[str]],
    http_port: int | None = None,
    grpc_port: int | None = None,
    catalog_version: int = 0,
    identity_secret: bytes = b"",
    key_expiries: dict[str, float] | None = None,
) -> str:
    """Deploy the ingress and return its base URL. With ``grpc_port``, the gRPC decision
    service (``headstart/protos/headstart.proto``) is served there too, on the same host.

    ``catalog_version``: the stored version ``catalog`` is; every replica then serves the
    store's latest version and switches to each newer one (0: serve ``catalog`` as given, for
    tests that hand one over directly). ``identity_secret``: what user hashes are HMACs under
    (needed unless ``settings.identity_verification`` is off). ``key_hashes`` (and
    ``key_expiries``: when keys in a rotation's grace period stop): the keys accepted until a
    replica reads the key store (:mod:`actors.ingress.live_keys`)."""
    from ray import serve
    from ray.serve.config import gRPCOptions

    from actors.ingress import Ingress, IngressConfig

    port = settings.port if http_port is None else http_port
    grpc_options = gRPCOptions(port=grpc_port, grpc_servicer_functions=[GRPC_SERVICER]) if grpc_port else None
    serve.start(http_options={"host": settings.host, "port": port}, grpc_options=grpc_options)
    config = IngressConfig(
        nats_url=nats_url,
        nats_auth=settings.nats_auth(),
        partitions=settings.partitions,
        secret=secret,
        key_hashes=key_hashes,
        key_expiries=key_expiries or {},
        catalog=catalog,
        catalog_version=catalog_version,
        stream_replicas=settings.stream_replicas,
        rate_limits={
            "frontend": settings.frontend_rate_limit,
            "server": settings.server_rate_limit,
            "admin": settings.admin_rate_limit,
        },
        cors_origins=settings.cors_origins,
        identity_verification=settings.identity_verification,
        identity_secret=identity_secret,
        anonymous_prefix=settings.anonymous_prefix,
        segment_prefix=settings.segment_prefix,
        events_retention_days=settings.retention().events_days,
    )
    deployment = Ingress.options(**ingress_scaling(settings))  # type: ignore[attr-defined]
    serve.run(deployment.bind(config), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{settings.host}:{port}"


def ingress_scaling(settings: Settings) -> dict[str, Any]:
    """Serve options for the ingress: one replica, or autoscaling between the configured bounds.

    On this 2-core machine one replica was fastest (a second one competes with the shards and
    HAProxy for the same cores); on bigger nodes, autoscale on requests in flight per replica.
    """
    if settings.ingress_max_replicas == 1:
        return {"num_replicas": 1}
    return {
        "autoscaling_config": {
            "min_replicas": settings.ingress_min_replicas,
            "max_replicas": settings.ingress_max_replicas,
            "target_ongoing_requests": settings.ingress_target_ongoing_requests,
            "upscale_delay_s": 5.0,
            "downscale_delay_s": 60.0,
        }
    }


def stop_app() -> None:
    from ray import serve

    serve.shutdown()  # type: ignore[no-untyped-call]


def app_status() -> Any:
    from ray import serve

    return serve.status()
