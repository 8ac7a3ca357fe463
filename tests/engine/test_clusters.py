"""Behavioural clusters: River's k-means on a seeded stream, served without River."""

from __future__ import annotations

import random
from collections import Counter

from engine.clusters import BEHAVIOUR, ClusterAssigner, ClusterModel, behaviour, describe_export
from engine.events import event_from_object
from engine.profile import UserState, Vocabularies

NOW = 1_767_571_200.0
# Three kinds of users, in the behavioural vector's units (log counts, steps...).
GROUPS = {
    "browsers": [0.7, 1.5, 0.5, 0.7, 0.0, 0.0, 0.5],
    "builders": [2.0, 3.5, 2.5, 1.8, 4.0, 1.0, 2.0],
    "power": [3.0, 5.0, 4.0, 2.5, 6.0, 2.0, 3.0],
}


def stream(n: int, seed: int) -> list[tuple[str, list[float]]]:
    rng = random.Random(seed)
    names = list(GROUPS)
    out = []
    for _ in range(n):
        group = rng.choice(names)
        out.append((group, [v + rng.gauss(0, 0.15) for v in GROUPS[group]]))
    return out


def trained(samples: list[tuple[str, list[float]]], seed: int = 7) -> ClusterModel:
    model = ClusterModel(k=3, halflife=0.05, seed=seed)
    for _, vector in samples:
        model.learn(vector)
    return model


def purity(assigner: ClusterAssigner, samples: list[tuple[str, list[float]]]) -> float:
    by_cluster: dict[int, Counter[str]] = {}
    for group, vector in samples:
        by_cluster.setdefault(assigner.nearest(vector), Counter())[group] += 1
    return sum(c.most_common(1)[0][1] for c in by_cluster.values()) / len(samples)


def test_the_same_seeded_stream_gives_the_same_clusters() -> None:
    samples = stream(3000, seed=1)
    assert trained(samples).export() == trained(samples).export()


def test_clusters_find_the_groups_and_stay_put_as_the_same_population_streams_on() -> None:
    model = trained(stream(3000, seed=1), seed=3)
    held_out = stream(600, seed=2)
    before = ClusterAssigner.from_export(model.export())
    assert purity(before, held_out) >= 0.95
    for _, vector in stream(3000, seed=4):  # more of the same population
        model.learn(vector)
    after = ClusterAssigner.from_export(model.export())
    kept = sum(before.nearest(v) == after.nearest(v) for _, v in held_out) / len(held_out)
    assert kept >= 0.95, kept  # a cluster keeps its number as its center moves


def test_the_assigner_agrees_with_river() -> None:
    model = trained(stream(2000, seed=5))
    assigner = ClusterAssigner.from_export(model.export())
    for _, vector in stream(300, seed=6):
        assert assigner.nearest(vector) == model.predict(vector)


def test_a_restored_model_learns_on_as_the_original() -> None:
    first = trained(stream(1000, seed=1))
    copy = ClusterModel.restore(first.export())
    for _, vector in stream(500, seed=9):
        first.learn(vector)
        copy.learn(vector)
    assert copy.export() == first.export()


def test_a_description_names_what_sets_each_cluster_apart() -> None:
    model = trained(stream(3000, seed=1), seed=3)
    described = describe_export(model.export())
    assert len(described) == 3
    power = max(described, key=lambda d: d["center"]["steps_completed"])
    assert power["distinguishing"][0]["direction"] == "high"
    assert abs(power["center"]["steps_completed"] - 6.0) < 0.5


def test_the_behaviour_vector_summarizes_live_state() -> None:
    vocab, user = Vocabularies(), UserState.new(NOW)
    for n, body in enumerate(
        [
            {"type": "session_started"},
            {"type": "feature_clicked", "props": {"feature": "export"}},
            {"type": "feature_clicked", "props": {"feature": "share"}},
            {"type": "step_completed", "props": {"step": "profile"}},
        ]
    ):
        user.apply(event_from_object({"event_id": str(n), "user_id": "k", "ts": NOW + 60 * n, **body}), vocab)
    vector = dict(zip(BEHAVIOUR, behaviour(user, NOW + 180), strict=True))
    assert vector["steps_completed"] == 1.0
    assert round(vector["log_features_used"], 6) == round(__import__("math").log1p(2), 6)
    assert vector["log_minutes_per_session"] > 0


def test_assigning_a_user_is_the_nearest_center_to_their_vector() -> None:
    """The compiled assigning function (the event path's) answers as ``nearest(behaviour())``
    on users of every kind, and a feature without variance or a broken number changes nothing
    of that."""
    rng = random.Random(5)
    vocab = Vocabularies()
    users = []
    for u in range(200):
        user = UserState.new(NOW)
        for n in range(rng.randint(1, 40)):
            feature, step = rng.choice(["export", "share", "search"]), rng.choice(["profile", "invite"])
            body = rng.choice(
                [
                    {"type": "session_started"},
                    {"type": "feature_clicked", "props": {"feature": feature}},
                    {"type": "step_completed", "props": {"step": step}},
                    {"type": "tutorial_completed", "props": {"tutorial": "tour", "variant": "video"}},
                ]
            )
            ts = NOW + n * rng.choice([5, 600, 7200])
            user.apply(event_from_object({"event_id": f"{u}.{n}", "user_id": "k", "ts": ts, **body}), vocab)
        users.append(user)
    export = trained(stream(600, seed=3)).export()
    export["vars"][4] = 0.0  # no variance: the feature weighs nothing
    for data in (export, {**export, "centers": [[float("nan")] * 7, *export["centers"][1:]]}):
        assigner = ClusterAssigner.from_export(data)
        for user in users:
            for now in (user.last_seen, user.last_seen + 3 * 86400):
                assert assigner.assign(user, now) == assigner.nearest(behaviour(user, now))
