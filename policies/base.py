"""The one base class every policy implements, and what all policies share.

A policy chooses one arm among the *eligible* ones (rules decide eligibility, the policy only
chooses), says with which probability it chose it (the propensity, logged with the decision for
off-policy evaluation), and learns from rewards. Its learned state is a set of *additive
sufficient statistics* (counts, sums, Gram matrices), which is what makes learning across
shards exact: a policy that learned on four shards and merged equals one that learned on one
shard from the same events, up to floating-point rounding.

Merging: the engine keeps, per partition, what that partition's rewards added
(:meth:`Policy.accumulate` into :meth:`Policy.zero_stats`); the statistics every shard serves
are the sum over all partitions (:meth:`Policy.load_stats`), kept current between merges by
:meth:`Policy.update`. See :mod:`engine.learning`.

Policies are seeded and their state (statistics and random generator) round-trips through
:meth:`Policy.snapshot` and :meth:`Policy.restore`.
"""

from __future__ import annotations

import abc
import json
import pickle
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import msgspec
import numpy as np
from river import drift

Stats = dict[str, np.ndarray]

#: Every concrete policy class, by name: the contract tests run against all of them.
REGISTRY: dict[str, type[Policy]] = {}


class Choice(NamedTuple):
    """The chosen arm (an index into the policy's arms) and its probability under the policy."""

    arm: int
    propensity: float


class Policy(abc.ABC):
    """Chooses among eligible arms and learns from rewards in [0, 1].

    Subclasses implement :meth:`probabilities` and :meth:`update`, keep their learned state in
    ``self.stats`` (additive) and recompute whatever they derive from it in :meth:`_refresh`.
    """

    #: Registry name (``headstart evaluate --policy NAME``); None for abstract classes.
    name: ClassVar[str | None] = None
    #: Bumped when the meaning of the statistics changes; stored with every decision.
    version: ClassVar[int] = 1
    #: Whether the policy uses the context vector.
    contextual: ClassVar[bool] = False
    # Every statistic runs over the arms along its first axis (row i: what was learned about
    # ``arms[i]``): a catalog change reads statistics by arm name along it
    # (:func:`engine.learning.remap_arms`); the contract suite checks every policy keeps to it.
    #: The axes of each statistic that run over the context vector's features: statistics
    #: learned with another feature layout are read by feature name along them
    #: (:func:`engine.features.remap`).
    feature_axes: ClassVar[dict[str, tuple[int, ...]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name is not None:
            REGISTRY[cls.name] = cls

    def __init__(
        self,
        arms: Sequence[str],
        dim: int = 0,
        seed: int = 0,
        detect_drift: bool = True,
        forget_factor: float = 0.0,
        drift_delta: float = 0.02,
    ) -> None:
        if not arms:
            raise ValueError("a policy needs at least one arm")
        if not 0.0 <= forget_factor <= 1.0:
            raise ValueError("forget_factor must be in [0, 1]")
        self.arms = list(arms)
        self.dim = dim
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.detect_drift = detect_drift
        self.forget_factor = forget_factor
        self.drift_delta = drift_delta
        #: ADWIN (River) on the rewards this policy earns: when their rate drops, what was
        #: learned before is scaled by ``forget_factor`` (0 by default: start over), which also
        #: raises exploration. The defaults (ADWIN δ 0.02, start over) beat smaller δ and partial
        #: forgetting on bench/learn.py's drifting population (3 seeds), one detection per drift.
        self.detector: drift.ADWIN | None = drift.ADWIN(delta=drift_delta) if detect_drift else None  # type: ignore[no-untyped-call]
        self.drifts = 0
        self.stats: Stats = self._initial_stats()
        self._refresh()

    # ------------------------------------------------------------------ the policy

    @abc.abstractmethod
    def _initial_stats(self) -> Stats:
        """Zeroed sufficient statistics."""

    def _refresh(self) -> None:  # noqa: B027 - optional hook, nothing to derive by default
        """Recompute what is derived from ``self.stats`` after a bulk change (merge, restore)."""

    @abc.abstractmethod
    def probabilities(self, x: np.ndarray | None, eligible: Sequence[int]) -> np.ndarray:
        """The probability of choosing each eligible arm (same order), summing to 1."""

    @abc.abstractmethod
    def accumulate(self, stats: Stats, x: np.ndarray | None, arm: int, reward: float, weight: float) -> None:
        """Add one weighted reward to ``stats`` (this policy's or a partition's), in place."""

    def _update(self, x: np.ndarray | None, arm: int, reward: float, weight: float) -> None:
        """Add one reward to ``self.stats`` and whatever is derived from them."""
        self.accumulate(self.stats, x, arm, reward, weight)

    def update(self, x: np.ndarray | None, arm: int, reward: float, weight: float = 1.0) -> None:
        """Learn that choosing ``arm`` in context ``x`` earned ``reward`` (in [0, 1]).

        ``weight`` scales the observation (a journey reward may count less than the next click).
        """
        self._update(x, arm, reward, weight)
        detector = self.detector
        if detector is not None:
            before = detector.estimation
            detector.update(reward)  # type: ignore[no-untyped-call]
            # Only a drop: a rising reward rate is the policy learning, not the world changing.
            if detector.drift_detected and detector.estimation < before:
                self.drifts += 1
                self.forget(self.forget_factor)

    def forget(self, keep: float) -> None:
        """Scale what was learned by ``keep`` (0: start over), as after a detected drift."""
        self.stats = {k: v * keep for k, v in self.stats.items()}
        self._refresh()

    def select(self, x: np.ndarray | None, eligible: Sequence[int]) -> Choice:
        """Draw an eligible arm from :meth:`probabilities`."""
        if not eligible:
            raise ValueError("no eligible arm to choose from")
        if len(eligible) == 1:
            return Choice(eligible[0], 1.0)
        p = self.probabilities(x, eligible).tolist()
        # A plain loop over a handful of floats beats cumsum + searchsorted on tiny arrays.
        target = self.rng.random() * sum(p)
        acc = 0.0
        for i, pi in enumerate(p):
            acc += pi
            if target < acc:
                return Choice(eligible[i], pi)
        return Choice(eligible[-1], p[-1])

    def reward_totals(self) -> tuple[np.ndarray, np.ndarray]:
        """Per arm: the weighted number of rewards learned from, and their weighted sum."""
        return self.stats["n"], self.stats["r"]

    def arm_index(self, arm: str) -> int:
        return self.arms.index(arm)

    # ------------------------------------------------------------------ merging across shards

    def zero_stats(self) -> Stats:
        """Empty statistics of this policy's shape (a partition's contribution starts here)."""
        return self._initial_stats()

    def load_stats(self, stats: Stats) -> None:
        """Serve ``stats`` (the sum of every partition's contribution) from now on."""
        self.stats = {k: np.array(v, dtype=float, copy=True) for k, v in stats.items()}
        self._refresh()

    # ------------------------------------------------------------------ state

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(
            {
                "name": self.name,
                "version": self.version,
                "arms": self.arms,
                "dim": self.dim,
                "stats": pack_stats(self.stats),
                # JSON: the generator's state holds 128-bit integers, beyond msgpack's range.
                "rng": json.dumps(self.rng.bit_generator.state),
                "params": self.params(),
                "drifts": self.drifts,
                # River's detector pickles; snapshots are Headstart's own data, never a user's.
                "detector": pickle.dumps(self.detector) if self.detector is not None else None,
            }
        )

    @classmethod
    def restore(cls, data: bytes) -> Policy:
        state = msgspec.msgpack.decode(data)
        policy_cls = REGISTRY[state["name"]]
        if state["version"] != policy_cls.version:
            raise ValueError(f"{state['name']} state version {state['version']} is not {policy_cls.version}")
        policy = policy_cls(state["arms"], dim=state["dim"], **state["params"])
        policy.stats = unpack_stats(state["stats"])
        policy.rng.bit_generator.state = json.loads(state["rng"])
        policy.drifts = state["drifts"]
        policy.detector = pickle.loads(state["detector"]) if state["detector"] is not None else None
        policy._refresh()
        return policy

    def params(self) -> dict[str, Any]:
        """Constructor arguments beyond arms and dim (stored in snapshots)."""
        return {
            "seed": self.seed,
            "detect_drift": self.detect_drift,
            "forget_factor": self.forget_factor,
            "drift_delta": self.drift_delta,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(arms={len(self.arms)}, dim={self.dim})"


class ArmMeans(Policy):
    """Abstract: policies that learn each arm's pull count ``n`` and reward sum ``r`` only."""

    def _initial_stats(self) -> Stats:
        k = len(self.arms)
        return {"n": np.zeros(k), "r": np.zeros(k)}

    def accumulate(self, stats: Stats, x: np.ndarray | None, arm: int, reward: float, weight: float) -> None:
        stats["n"][arm] += weight
        stats["r"][arm] += weight * reward


def pack_stats(stats: Stats) -> dict[str, Any]:
    """Statistics as msgpack-ready values (dtype, shape, raw bytes)."""
    return {k: [str(v.dtype), list(v.shape), v.tobytes()] for k, v in stats.items()}


def unpack_stats(packed: dict[str, Any]) -> Stats:
    return {
        k: np.frombuffer(raw, dtype=dtype).reshape(shape).copy() for k, (dtype, shape, raw) in packed.items()
    }


def greedy_with_ties(values: np.ndarray) -> np.ndarray:
    """Probabilities that put all mass on the best values, split evenly among ties."""
    best = values >= values.max() - 1e-12
    p: np.ndarray = best / best.sum()
    return p
