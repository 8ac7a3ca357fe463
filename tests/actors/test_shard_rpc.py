"""The shard RPC's contract, every method through the handler table (no Ray, no NATS): requests
round-trip, each method answers JSON, unknown methods, malformed requests and partitions not
owned answer their error, and a batch answers as its requests one by one."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from actors.shard_rpc import ShardRpc
from engine.answers import Answers, Logs
from engine.decision import Decider
from engine.events import encode_event
from engine.keys import Pseudonymizer
from engine.learning import Learner
from engine.partition import PartitionSetup, PartitionState
from engine.shard import ShardState
from headstart.adapters.rpc import (
    REQUESTS,
    DecideRequest,
    ExperimentMomentsRequest,
    FlagsRequest,
    LearnedRequest,
    Method,
    PingRequest,
    ProfileSampleRequest,
    ProfilesRequest,
    Request,
    SegmentSizesRequest,
    SnapshotThroughRequest,
    StatsRequest,
    TutorialRequest,
    TutorialStatsRequest,
    UserRequest,
    batch_item,
    decode_request,
    encode_request,
    is_error,
)
from tests.engine.test_experiment_arms import experiment_catalog

NOW = 1_767_600_000.0
KEYS = [Pseudonymizer(b"s" * 32).key(f"user{i}") for i in range(40)]
KEY = KEYS[0]
SHARD = 7

#: One request per method: a method added to the registry needs an example here.
EXAMPLES: dict[Method, Request] = {
    Method.DECIDE: DecideRequest(key=KEY, context={"device_type": "mobile", "locale": "en"}, now=NOW),
    Method.TUTORIAL: TutorialRequest(key=KEY, context={}, step="first_project", now=NOW),
    Method.FLAGS: FlagsRequest(key=KEY, context={"locale": "de-DE"}, now=NOW),
    Method.USER: UserRequest(key=KEY, now=NOW),
    Method.PING: PingRequest(key=""),
    Method.STATS: StatsRequest(key=""),
    Method.SNAPSHOT_THROUGH: SnapshotThroughRequest(key="", seq=3),
    Method.SEGMENT_SIZES: SegmentSizesRequest(key="", now=NOW),
    Method.TUTORIAL_STATS: TutorialStatsRequest(key=""),
    Method.PROFILE_SAMPLE: ProfileSampleRequest(key="", size=5, now=NOW),
    Method.PROFILES: ProfilesRequest(key="", after="", limit=10, now=NOW),
    Method.EXPERIMENT_MOMENTS: ExperimentMomentsRequest(key="", experiment="welcome_copy", cuts=[NOW]),
    Method.LEARNED: LearnedRequest(key=""),
}


def event(i: int, key: str, kind: str, **props: Any) -> bytes:
    body: dict[str, Any] = {"event_id": f"e{i}", "user_id": key, "type": kind, "ts": NOW - 100 + i}
    if props:
        body["props"] = props
    return encode_event(body)


class Shard:
    """A shard's RPC over partitions 0 and 1, with what it logged and snapshotted."""

    def __init__(self) -> None:
        catalog = experiment_catalog(holdout=None)
        decider = Decider(catalog)
        learner = Learner(catalog, decider, seed=SHARD)
        self.state = ShardState.build(
            {0: None, 1: None}, PartitionSetup(learner, experiment_plan=decider.experiments)
        )
        self.logged: list[Logs] = []
        self.snapshotted: list[tuple[int, int]] = []
        self.rpc = ShardRpc(
            SHARD,
            self.state,
            Answers(decider, learner),
            lambda: self.state.partitions,
            self._stats,
            self._snapshot_through,
            self.logged.append,
        )
        part = self.state.partitions[0]
        for i, key in enumerate(KEYS):
            part.apply_message(3 * i + 1, key, event(3 * i, key, "session_started"))
            part.apply_message(3 * i + 2, key, event(3 * i + 1, key, "step_completed", step="welcome"))
            part.apply_message(
                3 * i + 3,
                key,
                event(3 * i + 2, key, "tutorial_started", tutorial="first_project", variant="checklist"),
            )

    async def _stats(self) -> dict[str, Any]:
        return {"shard": SHARD, "users": self.state.users}

    async def _snapshot_through(self, part: PartitionState, seq: int) -> bool:
        self.snapshotted.append((part.partition, seq))
        return part.last_seq >= seq

    def ask(self, method: str, data: bytes, partition: int = 0) -> bytes:
        return asyncio.run(self.rpc.on_request(partition, method, data))

    def batch(self, items: list[Any]) -> list[bytes]:
        replies = msgspec.msgpack.decode(asyncio.run(self.rpc.on_batch(msgspec.msgpack.encode(items))))
        return [bytes(r) for r in replies]


@pytest.fixture
def shard() -> Shard:
    return Shard()


def error_code(reply: bytes) -> str:
    assert is_error(reply), reply
    return str(msgspec.json.decode(reply)["error"]["code"])


def test_every_method_is_registered_with_a_request_and_a_handler(shard: Shard) -> None:
    assert set(REQUESTS) == set(Method) == set(EXAMPLES) == set(shard.rpc.handlers)
    for method, cls in REQUESTS.items():
        assert cls.method is method


@pytest.mark.parametrize("method", list(Method))
def test_requests_round_trip(method: Method) -> None:
    request = EXAMPLES[method]
    assert decode_request(method, encode_request(request)) == request
    # In a batch, the request travels with its partition and method, and comes back the same.
    item = msgspec.msgpack.decode(msgspec.msgpack.encode(batch_item(3, request)))
    assert item["partition"] == 3 and item["method"] == method.value
    assert msgspec.convert(item, REQUESTS[method]) == request


@pytest.mark.parametrize("method", list(Method))
def test_every_method_answers_json(shard: Shard, method: Method) -> None:
    reply = shard.ask(method.value, encode_request(EXAMPLES[method]))
    assert not is_error(reply), reply
    msgspec.json.decode(reply)


def test_what_the_answers_say(shard: Shard) -> None:
    ping = msgspec.json.decode(shard.ask("ping", encode_request(EXAMPLES[Method.PING]), partition=1))
    assert ping == {"shard": SHARD, "partition": 1, "catalog_version": 0}
    snap = shard.ask("snapshot_through", encode_request(SnapshotThroughRequest(key="", seq=5)))
    assert msgspec.json.decode(snap) == {"snapshotted": True} and shard.snapshotted == [(0, 5)]
    sizes = msgspec.json.decode(shard.ask("segment_sizes", encode_request(EXAMPLES[Method.SEGMENT_SIZES])))
    assert sizes["shard"] == SHARD and sizes["users"] == len(KEYS)
    assert sizes["segments"]["new_user"]["size"] == len(KEYS)
    assert list(sizes["segments"]["new_user"]) == ["size", "engagement_sum", "activated"]
    page = msgspec.json.decode(shard.ask("profiles", encode_request(EXAMPLES[Method.PROFILES])))
    assert page["partition"] == 0 and len(page["rows"]) == 10 and page["more"] is True
    assert [r["user_key"] for r in page["rows"]] == sorted(KEYS)[:10]
    assert all("name" not in r["traits"] for r in page["rows"])
    stats = msgspec.json.decode(shard.ask("tutorial_stats", encode_request(EXAMPLES[Method.TUTORIAL_STATS])))
    assert stats == {"shard": SHARD, "rows": [["first_project", "checklist", "all", len(KEYS), 0]]}
    user = msgspec.json.decode(shard.ask("user", encode_request(EXAMPLES[Method.USER])))
    assert user["sessions"] == 1 and "activation_probability" in user and "recommended_features" in user
    assert shard.ask("user", encode_request(UserRequest(key="nobody"))) == b"null"


def test_a_decision_answer_keeps_its_keys_and_logs_its_exposures_once(shard: Shard) -> None:
    request = encode_request(EXAMPLES[Method.DECIDE])
    answer = msgspec.json.decode(shard.ask("decide", request))
    assert list(answer) == [
        "decision_id",
        "step",
        "tutorial",
        "message",
        "step_message",
        "flags",
        "segments",
        "experiments",
        "completed_steps",
        "personalized",
        "explain",
        "activation_probability",
        "recommended_features",
        "catalog_version",
        "journey",
        "surfaces",
    ]
    assert answer["step"]["id"] == "profile" and answer["personalized"] is True
    first = shard.logged[-1]
    assert first.partition == 0 and [e.experiment for e in first.exposures] == ["welcome_copy"]
    assert first.exposures[0].arm == answer["experiments"]["welcome_copy"]
    shard.ask("decide", request)  # the same user again: the exposure is pending, not logged twice
    assert shard.logged[-1].exposures == []


def test_a_tutorial_without_a_variant_answers_without_a_decision(shard: Shard) -> None:
    reply = shard.ask("tutorial", encode_request(TutorialRequest(key=KEY, feature="no-such-feature")))
    assert reply == b"null"
    chosen = msgspec.json.decode(shard.ask("tutorial", encode_request(EXAMPLES[Method.TUTORIAL])))
    assert list(chosen) == [
        "decision_id",
        "tutorial",
        "variant",
        "eligible",
        "segments",
        "experiments",
        "explain",
        "catalog_version",
    ]


def test_unknown_methods(shard: Shard) -> None:
    assert error_code(shard.ask("nope", encode_request(PingRequest(key="")))) == "unknown_method"
    [reply] = shard.batch([{"partition": 0, "key": "", "method": "nope"}])
    assert error_code(reply) == "unknown_method"


@pytest.mark.parametrize(
    ("method", "data"),
    [
        ("ping", b"\xc1"),  # not msgpack
        ("ping", msgspec.msgpack.encode([1, 2])),  # not a map
        ("ping", msgspec.msgpack.encode({"now": 1.0})),  # no key
        ("decide", msgspec.msgpack.encode({"key": 5})),  # a key that is not a string
        ("decide", msgspec.msgpack.encode({"key": KEY, "context": "mobile"})),
        ("snapshot_through", msgspec.msgpack.encode({"key": ""})),  # no seq
        ("experiment_moments", msgspec.msgpack.encode({"key": ""})),  # no experiment
        ("experiment_moments", msgspec.msgpack.encode({"key": "", "experiment": "none"})),  # unknown
    ],
)
def test_malformed_requests_are_bad_requests(shard: Shard, method: str, data: bytes) -> None:
    assert error_code(shard.ask(method, data)) == "bad_request"


def test_malformed_batches_and_items_are_bad_requests(shard: Shard) -> None:
    [reply] = msgspec.msgpack.decode(asyncio.run(shard.rpc.on_batch(b"\xc1")))
    assert error_code(bytes(reply)) == "bad_request"
    [reply] = msgspec.msgpack.decode(asyncio.run(shard.rpc.on_batch(msgspec.msgpack.encode({"a": 1}))))
    assert error_code(bytes(reply)) == "bad_request"
    replies = shard.batch(
        [
            {"partition": "zero", "key": "", "method": "ping"},
            {"partition": 0, "method": "ping"},
            {"partition": 0, "key": "", "method": "ping"},
        ]
    )
    assert [error_code(r) for r in replies[:2]] == ["bad_request", "bad_request"]
    assert not is_error(replies[2])


def test_partitions_not_owned(shard: Shard) -> None:
    for method in Method:
        reply = shard.ask(method.value, encode_request(EXAMPLES[method]), partition=5)
        assert error_code(reply) == "not_owned"
    [reply] = shard.batch([batch_item(5, EXAMPLES[Method.DECIDE])])
    assert error_code(reply) == "not_owned"


def test_a_batch_answers_as_its_requests_one_by_one(shard: Shard) -> None:
    requests = [FlagsRequest(key=k, context={"device_type": "mobile"}, now=NOW) for k in KEYS[:5]]
    alone = [shard.ask("flags", encode_request(r)) for r in requests]
    assert shard.batch([batch_item(0, r) for r in requests]) == alone
    # Items as the previous client built them (key, method and partition beside the arguments).
    legacy = [
        {"partition": 0, "key": r.key, "method": "flags", "context": r.context, "now": NOW} for r in requests
    ]
    assert shard.batch(legacy) == alone
