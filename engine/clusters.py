"""Learned segments: behavioural clusters from River's online k-means.

Each user is summarized by a small behavioural vector (:func:`behaviour`: log-scaled sessions,
events, engagement, features used, steps and tutorials completed, time per session).
:class:`ClusterModel` is River's ``StandardScaler | KMeans`` learning from a sample of those
vectors; an update costs far more than an assignment, so it learns off the event path at a
bounded rate, on one shard only (users are partitioned by a keyed hash, so any shard's users
are an unbiased sample of everyone). What it learned is published as plain numbers
(:meth:`ClusterModel.export`) and every shard assigns its users with a :class:`ClusterAssigner`
built from them: the nearest center in the scaler's space, cheaply, the same answer on every
shard.

River's k-means moves only the nearest center toward each sample, by ``halflife``: centers
keep their numbers as they move, so ``cluster == 2`` keeps meaning the same group of users.
River places its centers at random, and a center that starts where no user is never wins a
sample and never moves; so the model first gathers :data:`WARMUP` samples, fits the scaler on
them and seeds the centers from them with k-means++ (written here: River has no seeding).

>>> import random
>>> rng = random.Random(1)
>>> model = ClusterModel(k=2, halflife=0.1, seed=3)
>>> for _ in range(400):
...     heavy = rng.random() < 0.5
...     model.learn([rng.gauss(3.0 if heavy else 0.5, 0.2) for _ in BEHAVIOUR])
>>> model.ready
True
>>> assigner = ClusterAssigner.from_export(model.export())
>>> assigner.nearest([3.0] * len(BEHAVIOUR)) != assigner.nearest([0.5] * len(BEHAVIOUR))
True
"""

from __future__ import annotations

import math
import operator
import random
from typing import Any

from river import cluster, compose, preprocessing

from engine.events import EventKind
from engine.profile import C_EVENTS, C_SESSIONS, UserState

#: The behavioural vector's components, in order.
BEHAVIOUR = (
    "log_sessions",
    "log_events",
    "log_engagement",
    "log_features_used",
    "steps_completed",
    "log_tutorials_completed",
    "log_minutes_per_session",
)
#: Samples gathered before the centers are seeded from them.
WARMUP = 64


#: How each component is read from a user ``u`` (counters ``c``, sessions ``n``) as of
#: ``now``: our own expressions, compiled once into :func:`behaviour` and into each
#: :class:`ClusterAssigner`'s assigning function, so both read the same vector.
_BEHAVIOUR_READERS = {
    "log_sessions": "log1p(n)",
    "log_events": f"log1p(c[{C_EVENTS}])",
    "log_engagement": "log1p(u.engagement if now <= u.last_seen else u.engagement_at(now))",
    "log_features_used": "log1p(len(u.features) // 3) if u.features is not None else 0.0",
    "steps_completed": "float(u.completed_steps.bit_count())",
    "log_tutorials_completed": f"log1p(c[{int(EventKind.TUTORIAL_COMPLETED)}])",
    "log_minutes_per_session": "log1p(u.session_seconds / n / 60.0) if n else 0.0",
}
_READER_NAMES: dict[str, Any] = {
    "__builtins__": {},
    "log1p": math.log1p,
    "len": len,
    "float": float,
}


def _compile(name: str, tail: list[str]) -> Any:
    """A function ``name(u, now)`` that reads the vector into ``x0``..``x6``, then runs ``tail``."""
    lines = [f"def {name}(u, now):", "    c = u.counters", f"    n = c[{C_SESSIONS}]"]
    lines += [f"    x{i} = {_BEHAVIOUR_READERS[f]}" for i, f in enumerate(BEHAVIOUR)]
    namespace = dict(_READER_NAMES)
    # Only the constant readers above and numbers written by repr(float) (see ClusterAssigner).
    exec("\n".join(lines + tail), namespace)
    return namespace[name]


_behaviour = _compile("behaviour", [f"    return [{', '.join(f'x{i}' for i in range(len(BEHAVIOUR)))}]"])


def behaviour(user: UserState, now: float) -> list[float]:
    """The user's behavioural vector as of ``now`` (see :data:`BEHAVIOUR`)."""
    return _behaviour(user, now)  # type: ignore[no-any-return]


class ClusterModel:
    """River's ``StandardScaler | KMeans`` over behavioural vectors; snapshot by :meth:`export`.

    >>> model = ClusterModel(k=3, seed=1)
    >>> model.learn([1.0] * len(BEHAVIOUR))
    >>> ClusterModel.restore(model.export()).export() == model.export()
    True
    """

    def __init__(self, k: int = 4, halflife: float = 0.05, seed: int = 7) -> None:
        self.k, self.halflife, self.seed = k, halflife, seed
        self.scaler = preprocessing.StandardScaler()
        self.kmeans = cluster.KMeans(n_clusters=k, halflife=halflife, seed=seed)
        self.pipeline = compose.Pipeline(self.scaler, self.kmeans)
        self.learned = 0
        self.version = 0
        #: Samples until the centers are seeded (None once they are).
        self.warmup: list[list[float]] | None = []

    def learn(self, vector: list[float]) -> None:
        x = dict(zip(BEHAVIOUR, vector, strict=True))
        self.learned += 1
        if self.warmup is None:
            self.pipeline.learn_one(x)
            return
        self.scaler.learn_one(x)  # type: ignore[no-untyped-call]
        self.warmup.append(list(vector))
        if len(self.warmup) >= WARMUP:
            self._seed_centers(self.warmup)
            self.warmup = None

    @property
    def ready(self) -> bool:
        """Whether the centers are seeded (before that, nothing is served)."""
        return self.warmup is None

    def _seed_centers(self, vectors: list[list[float]]) -> None:
        """k-means++ over the warm-up samples (in the scaler's space), then learn them."""
        rng = random.Random(self.seed)
        scaled = [self.scaler.transform_one(dict(zip(BEHAVIOUR, v, strict=True))) for v in vectors]  # type: ignore[no-untyped-call]

        def distance(a: dict[str, float], b: dict[str, float]) -> float:
            return sum((a[f] - b[f]) ** 2 for f in BEHAVIOUR)

        chosen = [scaled[rng.randrange(len(scaled))]]
        while len(chosen) < self.k:
            weights = [min(distance(x, c) for c in chosen) for x in scaled]
            total = sum(weights)
            pick = rng.choices(scaled, weights)[0] if total > 0 else scaled[rng.randrange(len(scaled))]
            chosen.append(pick)
        for i, center in enumerate(chosen):
            self.kmeans.centers[i].update(center)
        for x in scaled:
            self.kmeans.learn_one(x)  # type: ignore[no-untyped-call]

    def predict(self, vector: list[float]) -> int:
        return int(self.pipeline.predict_one(dict(zip(BEHAVIOUR, vector, strict=True))))

    def export(self) -> dict[str, Any]:
        """What assigning needs, and what restoring the model needs: plain numbers."""
        return {
            "version": self.version,
            "learned": self.learned,
            "k": self.k,
            "halflife": self.halflife,
            "seed": self.seed,
            "features": list(BEHAVIOUR),
            "count": self.scaler.counts.get(BEHAVIOUR[0], 0),
            "means": [self.scaler.means.get(f, 0.0) for f in BEHAVIOUR],
            "vars": [self.scaler.vars.get(f, 0.0) for f in BEHAVIOUR],
            # Every center has every feature once it learned one sample (River creates a
            # center's coordinates on first use, from its seeded generator).
            "centers": [[self.kmeans.centers[i][f] for f in BEHAVIOUR] for i in range(self.k)],
            "warmup": self.warmup,
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> ClusterModel:
        model = cls(data["k"], data["halflife"], data["seed"])
        if list(data["features"]) != list(BEHAVIOUR):
            return model  # another vector layout: start again rather than mix meanings
        model.learned, model.version = data["learned"], data["version"]
        model.warmup = data.get("warmup")
        for f, mean, var in zip(BEHAVIOUR, data["means"], data["vars"], strict=True):
            model.scaler.counts[f] = data["count"]
            model.scaler.means[f] = mean
            model.scaler.vars[f] = var
        for i, center in enumerate(data["centers"]):
            for f, value in zip(BEHAVIOUR, center, strict=True):
                model.kmeans.centers[i][f] = value
        return model

    def describe(self) -> list[dict[str, Any]]:
        """Each cluster's center in the features' own units, and how far (in standard
        deviations from everyone's mean) each feature sits: what distinguishes the cluster."""
        return describe_export(self.export())


def describe_export(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, center in enumerate(data["centers"]):
        stds = [math.sqrt(v) for v in data["vars"]]
        raw = {f: m + c * s for f, m, c, s in zip(data["features"], data["means"], center, stds, strict=True)}
        ranked = sorted(zip(data["features"], center, strict=True), key=lambda fc: -abs(fc[1]))
        out.append(
            {
                "cluster": i,
                "center": raw,
                "distinguishing": [
                    {"feature": f, "z": z, "direction": "high" if z > 0 else "low"} for f, z in ranked[:3]
                ],
            }
        )
    return out


class ClusterAssigner:
    """The nearest published center, computed without River: in the scaler's space the squared
    distance to center c is ``sum(w_f * (x_f - r_f) ** 2)`` with ``r_f = mean_f + c_f * std_f``
    and ``w_f = 1 / var_f``, so assigning is a few multiplications per cluster.
    """

    __slots__ = ("_assign", "offsets", "scaled_centers", "usable", "version")

    def __init__(self, centers: list[list[float]], weights: list[float], version: int) -> None:
        self.version = version
        # sum(w (x - r)^2) = sum(w x^2) - 2 x.(w r) + sum(w r^2): the first term is the same for
        # every center, so the nearest minimizes offset_c - 2 x.(w r_c), one dot product each.
        self.scaled_centers = [[w * r for w, r in zip(weights, c, strict=True)] for c in centers]
        self.offsets = [sum(w * r * r for w, r in zip(weights, c, strict=True)) for c in centers]
        # A center with a non-finite number (a broken model) is never the nearest.
        self.usable = [
            math.isfinite(offset) and all(map(math.isfinite, scaled))
            for scaled, offset in zip(self.scaled_centers, self.offsets, strict=True)
        ]
        # Assigning runs on the event path (each new session): one function reading the vector
        # and scoring every center with its numbers written in, a fraction of the cost of
        # going through lists and loops (bench/RESULTS.md). The numbers are finite floats (repr
        # gives their literal).
        tail = []
        usable = [i for i, ok in enumerate(self.usable) if ok]
        for i in usable:
            dot = " + ".join(f"x{j} * {2.0 * v!r}" for j, v in enumerate(self.scaled_centers[i]))
            tail.append(f"    s{i} = {self.offsets[i]!r} - ({dot})")
        if usable:
            tail.append(f"    best, score = {usable[0]}, s{usable[0]}")
            tail += [f"    if s{i} < score:\n        best, score = {i}, s{i}" for i in usable[1:]]
            tail.append("    return best")
        else:
            tail.append("    return 0")
        self._assign = _compile("assign", tail)

    @classmethod
    def from_export(cls, data: dict[str, Any]) -> ClusterAssigner:
        stds = [math.sqrt(v) for v in data["vars"]]
        weights = [1.0 / v if v > 1e-12 else 0.0 for v in data["vars"]]
        centers = [
            [m + c * s for m, c, s in zip(data["means"], center, stds, strict=True)]
            for center in data["centers"]
        ]
        return cls(centers, weights, data["version"])

    def nearest(self, vector: list[float]) -> int:
        best, best_score = 0, math.inf
        for i, (scaled, offset) in enumerate(zip(self.scaled_centers, self.offsets, strict=True)):
            score = offset - 2.0 * sum(map(operator.mul, vector, scaled))
            if score < best_score and self.usable[i]:
                best, best_score = i, score
        return best

    def assign(self, user: UserState, now: float) -> int:
        """The nearest cluster to ``user``'s vector as of ``now``: ``nearest(behaviour(user, now))``."""
        return self._assign(user, now)  # type: ignore[no-any-return]

    def reassign(self, user: UserState, now: float) -> bool:
        """Assign ``user`` to its nearest cluster as of ``now``; True if that changed it."""
        cluster_id = self._assign(user, now)
        if cluster_id == user.cluster:
            return False
        user.cluster = cluster_id
        return True
