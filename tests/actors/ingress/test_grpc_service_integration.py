"""The gRPC decision service through Serve's gRPC ingress, with a real grpcio client: the same
semantics, auth and errors as the HTTP API."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from engine.catalog import DEFAULT_CATALOG, load_catalog
from headstart.adapters.broker import free_port
from headstart.protos import headstart_pb2 as pb
from headstart.protos import headstart_pb2_grpc as pb_grpc
from tests.actors.conftest import serving

pytestmark = pytest.mark.integration

KEYS = {"frontend": "grpc-frontend-key", "admin": "grpc-admin-key"}
FRONTEND = [("authorization", f"Bearer {KEYS['frontend']}"), ("application", "headstart")]


@pytest.fixture(scope="module")
def stub(ray_local: None, nats_url: str) -> Iterator[pb_grpc.DecisionServiceStub]:
    port = free_port()
    with (
        serving(nats_url, load_catalog(DEFAULT_CATALOG), KEYS, grpc_port=port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        grpc.channel_ready_future(channel).result(timeout=30)
        yield pb_grpc.DecisionServiceStub(channel)


def test_decide_send_events_select_and_reward(stub: pb_grpc.DecisionServiceStub) -> None:
    ask = pb.DecideRequest(user_id="grpc-user@example.com", context=pb.Context(device_type="mobile"))
    first = stub.Decide(ask, metadata=FRONTEND, timeout=10)
    assert first.step.id == "welcome" and "device_mobile" in first.segments
    assert first.flags["simplified_mobile_flow"] is True and first.decision_id
    event = pb.Event(
        event_id="grpc-e1",
        user_id="grpc-user@example.com",
        type="step_completed",
        ts=time.time(),
        props={"step": "welcome"},
    )
    sent = stub.SendEvents(pb.SendEventsRequest(events=[event]), metadata=FRONTEND, timeout=10)
    assert sent.accepted == 1 and sent.duplicates == 0
    again = stub.SendEvents(pb.SendEventsRequest(events=[event]), metadata=FRONTEND, timeout=10)
    assert again.accepted == 0 and again.duplicates == 1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        decision = stub.Decide(ask, metadata=FRONTEND, timeout=10)
        if "welcome" in decision.completed_steps:
            break
        time.sleep(0.2)
    assert decision.step.id == "profile"
    choice = stub.SelectTutorial(
        pb.SelectTutorialRequest(user_id="grpc-user@example.com", step="first_project"), metadata=FRONTEND
    )
    assert choice.tutorial == "first_project" and choice.variant in choice.eligible
    rewarded = stub.Reward(pb.RewardRequest(decision_id=decision.decision_id, reward=1.0), metadata=FRONTEND)
    assert rewarded.detail


def etc_zone(local_hour: int) -> str:
    """An ``Etc/GMT±N`` zone where it is now about ``local_hour`` (their signs are POSIX's)."""
    offset = (local_hour - time.gmtime().tm_hour + 12) % 24 - 12
    return f"Etc/GMT{-offset:+d}"


def test_the_context_time_zone_paces_and_the_kits_fields_come_back(stub: pb_grpc.DecisionServiceStub) -> None:
    """The default catalog's quiet hours are 22:00-07:00 in the user's time zone."""
    user = "grpc-kit-user@example.com"
    day = stub.Decide(
        pb.DecideRequest(user_id=user, context=pb.Context(timezone=etc_zone(12))), metadata=FRONTEND
    )
    assert day.surfaces["banner"].show is True and day.surfaces["banner"].reason == "allowed"
    assert [item.id for item in day.journey][:2] == ["welcome", "profile"] and day.journey[
        0
    ].url == "/welcome"
    night = stub.Decide(
        pb.DecideRequest(user_id=user, context=pb.Context(timezone=etc_zone(3))), metadata=FRONTEND
    )
    assert night.surfaces["banner"].show is False
    assert night.surfaces["banner"].reason.startswith("quiet hours 22:00-07:00")


@pytest.mark.parametrize(
    ("call", "metadata", "code"),
    [
        ("no key", [("application", "headstart")], grpc.StatusCode.UNAUTHENTICATED),
        ("admin key", [("authorization", f"Bearer {KEYS['admin']}")], grpc.StatusCode.PERMISSION_DENIED),
        ("both step and feature", FRONTEND, grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown event type", FRONTEND, grpc.StatusCode.INVALID_ARGUMENT),
        ("bad decision id", FRONTEND, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_errors_are_status_codes_with_the_http_apis_message(
    stub: pb_grpc.DecisionServiceStub, call: str, metadata: list[tuple[str, str]], code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        if call in ("no key", "admin key"):
            stub.Decide(pb.DecideRequest(user_id="u"), metadata=metadata, timeout=10)
        elif call == "both step and feature":
            stub.SelectTutorial(
                pb.SelectTutorialRequest(user_id="u", step="first_project", feature="invite"),
                metadata=metadata,
            )
        elif call == "unknown event type":
            bad = pb.Event(event_id="x", user_id="u", type="teleported", ts=time.time())
            stub.SendEvents(pb.SendEventsRequest(events=[bad]), metadata=metadata, timeout=10)
        else:
            stub.Reward(pb.RewardRequest(decision_id="nope", reward=1.0), metadata=metadata, timeout=10)
    error = raised.value
    assert error.code() == code, error.details()  # type: ignore[attr-defined]
    assert error.details()  # type: ignore[attr-defined]
