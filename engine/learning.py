"""The learning loop: decisions, rewards and the policy state they build, across shards.

Where each piece lives, and why that makes learning exactly-once:

- A decision with a real choice (two or more eligible arms) is logged as a
  :class:`DecisionRecord` to its user's partition in the events stream
  (``hs.events.<p>.<key>-decision``); explicit rewards go the same way
  (``hs.events.<p>.<key>-reward``). The partition applies them in stream order with the user's
  events, so attribution is a pure function of the stream: a replay after a crash rebuilds
  exactly the same rewards, and the partition's last applied sequence makes each count once.
- :class:`PartitionLearning` holds, per partition, the open decisions (waiting for their reward
  window), each user's path (waiting for the journey reward) and the partition's
  *contribution*: the additive statistics its rewards added to each policy. It is part of the
  partition's snapshot, so it checkpoints and moves with the partition.
- :class:`Learner` is what a shard serves: one policy per decision point whose statistics are
  the sum of every partition's contribution (its own partitions live, the others as their owners
  last published them), kept current between merges by its own partitions' rewards. Four shards
  and one shard serve the same statistics once merged, because the sum is the same.
- Drift: a detected drop in a served policy's reward rate forgets what was learned
  (``forget_factor``). Forgetting is recorded as statistics to subtract (``forgotten``), shared
  by all shards, so a merge does not bring the forgotten statistics back.

>>> from engine.catalog import DEFAULT_CATALOG, load_catalog
>>> from engine.decision import Decider
>>> catalog = load_catalog(DEFAULT_CATALOG)
>>> learner = Learner(catalog, Decider(catalog), seed=1)
>>> sorted(learner.points)
['step', 'tutorial:collaboration', 'tutorial:connect_data', 'tutorial:first_project']
>>> session = learner.session("k" * 26, None, {"device_type": "desktop"}, now=0.0, open_arms={})
>>> arm, why = session.choose("tutorial:first_project", ["interactive", "video"])
>>> record = session.record()
>>> arm in ("interactive", "video"), record.choices[0].point, record.layout == learner.layout.layout_id
(True, 'tutorial:first_project', True)
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

import msgspec
import numpy as np
from river import drift

from engine.catalog import Catalog
from engine.choices import POINT_STEP, TUTORIAL_POINT_PREFIX, StepRules, tutorial_point
from engine.errors import InvalidEvent
from engine.event_refs import props_match, seen
from engine.events import Event, EventKind
from engine.features import (
    BUILTIN_LAYOUT,
    LAYOUT_VERSION,
    FeatureLayout,
    layout_id,
    record_names,
    remap,
    remap_index,
)
from engine.keys import is_user_key
from engine.models import ActivationModel, FeatureRecommender, MergedActivation
from engine.profile import FIRST_USE, UserState, Vocabularies
from policies import available, create
from policies.base import Policy, Stats, pack_stats, unpack_stats

#: Decisions kept per user for the journey reward (the most recent ones).
MAX_PATH = 8
#: Decision ids of closed decisions kept per partition, to tell a late reward from an unknown one.
RECENTLY_CLOSED = 4096
#: Context features whose distribution at each decision point is watched for drift.
DRIFT_FEATURES = ("device=mobile", "log_engagement", "new_user")
FEATURE_DRIFT_DELTA = 0.002
#: The request or profile fields a decision's audience is logged by (``report fairness``).
AUDIENCE_FIELDS = ("device_type", "country", "locale")
#: How long a user's activation probability and recommendations are reused while nothing they
#: depend on changed, and for how many users per partition at most.
INSIGHTS_TTL_S = 60.0
INSIGHTS_CACHE = 50_000

Contributions = dict[str, dict[str, Stats]]  # policy name -> point -> statistics
#: The arms of each decision point, in the order statistics index them (point -> arm names).
Arms = Mapping[str, Sequence[str]]


def remap_arms(stats: Stats, old: Sequence[str], new: Sequence[str]) -> Stats | None:
    """Statistics learned over the arms ``old``, read by arm name over ``new``: every statistic
    runs over arms along its first axis (see :class:`policies.base.Policy`), so an arm in both
    keeps its rows, a new arm starts at zero and a removed arm's rows go. None: ``stats`` are not
    of ``old``'s size (nothing can read them).

    >>> stats = {"n": np.array([1.0, 2.0]), "r": np.array([0.5, 1.5])}
    >>> moved = remap_arms(stats, ["a", "b"], ["b", "c"])
    >>> moved["n"].tolist(), moved["r"].tolist()
    ([2.0, 0.0], [1.5, 0.0])
    >>> remap_arms(stats, ["a", "b", "c"], ["a"]) is None
    True
    """
    if list(old) == list(new):
        return stats
    if any(v.shape[:1] != (len(old),) for v in stats.values()):
        return None
    position = {arm: i for i, arm in enumerate(old)}
    pairs = [(i, position[arm]) for i, arm in enumerate(new) if arm in position]
    out: Stats = {}
    for key, value in stats.items():
        moved = np.zeros((len(new), *value.shape[1:]), dtype=value.dtype)
        for i, j in pairs:
            moved[i] = value[j]
        out[key] = moved
    return out


def new_decision_id(user_key: str) -> str:
    """The user's key and 16 random hex digits: a reward names its partition by itself."""
    return user_key + secrets.token_hex(8)


def user_key_of(decision_id: str) -> str | None:
    """The user key inside a decision id made by :func:`new_decision_id`, or None."""
    if len(decision_id) != 42:
        return None
    key, nonce = decision_id[:26], decision_id[26:]
    if not is_user_key(key) or any(c not in "0123456789abcdef" for c in nonce):
        return None
    return key


# ---------------------------------------------------------------------- wire records


class PointChoice(msgspec.Struct, omit_defaults=True):
    """One decision point of a decision: the served arm, its propensity, the eligible arms, and
    what the shadow policy would have chosen."""

    point: str
    arm: str
    propensity: float
    eligible: list[str]
    shadow_arm: str | None = None
    shadow_propensity: float | None = None
    #: The shadow's probability of each eligible arm (in ``eligible``'s order): what an
    #: off-policy estimate of the shadow needs for the arm the served policy chose.
    shadow_probabilities: list[float] | None = None


class DecisionRecord(msgspec.Struct, omit_defaults=True):
    """A logged decision (``hs.decisions.>``): enough to attribute rewards and to evaluate any
    other policy off-policy."""

    decision_id: str
    user_id: str
    ts: float
    policy: str
    policy_version: int
    features_version: int
    context: list[float]
    choices: list[PointChoice]
    shadow_policy: str | None = None
    #: Coarse audience of the decision (device_type, country, locale) for the bias audit
    #: (``headstart report fairness``): the request's, else the profile's.
    groups: dict[str, str] = msgspec.field(default_factory=dict)
    #: The id of the layout ``context`` is in (:class:`engine.features.FeatureLayout`); its
    #: feature names are registered once per layout (``HS_LEARN``, ``layout.<id>``), not
    #: repeated in every decision. None: a record from before layouts had ids, in the
    #: layout its ``features_version`` names (:data:`engine.features.LEGACY_NAMES`).
    layout: str | None = None
    #: The stored catalog version the decision was made from (0: a catalog not stored).
    catalog_version: int = 0


class RewardRecord(msgspec.Struct):
    """An explicit reward for a decision (``POST /v1/rewards``)."""

    decision_id: str
    reward: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    ts: float


decision_decoder = msgspec.msgpack.Decoder(DecisionRecord)
reward_decoder = msgspec.msgpack.Decoder(RewardRecord)
_encoder = msgspec.msgpack.Encoder()


def encode_record(record: DecisionRecord | RewardRecord) -> bytes:
    return _encoder.encode(record)


# ---------------------------------------------------------------------- the shard's policies


class ChoiceSession:
    """The choices of one request: the policy chooses per point, or an open decision's arm is
    kept (a user sees the same variant until its reward window closes)."""

    def __init__(
        self,
        learner: Learner,
        user_key: str,
        user: UserState | None,
        context: Mapping[str, Any] | None,
        now: float,
        open_arms: Mapping[str, tuple[str, str]],
        vocab: Vocabularies | None = None,
    ) -> None:
        self._learner = learner
        self._key = user_key
        self.user = user
        self.vocab = vocab
        self.context = context or {}
        self._vector: np.ndarray | None = None
        self.now = now
        self._open = open_arms
        self._choices: list[PointChoice] = []
        self._reused: str | None = None
        self._new_id: str | None = None
        #: The policy that chooses (an experiment's arm may name the shadow instead).
        self._policy_name = learner.policy_name
        self._policies = learner.served
        self._shadows = learner.shadows

    def serve(self, policy_name: str) -> None:
        """Let ``policy_name`` (the served or the shadow policy) choose in this session, and log
        its propensities: an experiment's arm testing one policy against another."""
        if policy_name == self._policy_name:
            return
        self._policy_name = policy_name
        self._policies = self._learner.policies_by_name()[policy_name]
        self._shadows = {}  # the logged propensities are the shadow's; no second opinion

    @property
    def x(self) -> np.ndarray:
        """The context vector the choices are made in: built on first use (a request that only
        keeps open decisions and hits the insights cache needs none)."""
        if self._vector is None:
            self._vector = self._learner.layout.vector(self.user, self.vocab, self.context, self.now)
        return self._vector

    def choose(self, point: str, eligible: list[str]) -> tuple[str, str]:
        """The arm to serve at ``point`` among ``eligible`` (in catalog order), and why."""
        learner = self._learner
        policy = self._policies.get(point)
        if policy is None or len(eligible) < 2:
            return eligible[0], "first eligible in catalog order"
        held = self._open.get(point)
        if held is not None and held[1] in eligible:
            self._reused = held[0]
            return held[1], f"kept from open decision {held[0][-8:]} (its reward window is open)"
        x = self.x
        learner.watch_features(point, x)
        index = learner.arm_index[point]
        ids = [index[arm] for arm in eligible]
        choice = policy.select(x if policy.contextual else None, ids)
        arm = policy.arms[choice.arm]
        picked = PointChoice(point=point, arm=arm, propensity=choice.propensity, eligible=list(eligible))
        shadow = self._shadows.get(point)
        if shadow is not None:
            # Its whole distribution, and an arm drawn from it (as its own select would).
            p = shadow.probabilities(x if shadow.contextual else None, ids)
            cumulative = np.cumsum(p)
            at = shadow.rng.random() * cumulative[-1]
            drawn = min(int(np.searchsorted(cumulative, at, "right")), len(ids) - 1)
            picked.shadow_arm, picked.shadow_propensity = shadow.arms[ids[drawn]], float(p[drawn])
            picked.shadow_probabilities = [round(float(q), 6) for q in p]
        self._choices.append(picked)
        return arm, f"chosen by {policy.name} (p={choice.propensity:.2f} among {len(eligible)})"

    @property
    def decision_id(self) -> str | None:
        """The new decision's id; else the open decision kept; else None (nothing learned)."""
        if self._choices:
            if self._new_id is None:
                self._new_id = new_decision_id(self._key)
            return self._new_id
        return self._reused

    def record(self) -> DecisionRecord | None:
        """The record to log, or None when no new choice was made."""
        if not self._choices:
            return None
        learner = self._learner
        return DecisionRecord(
            decision_id=self.decision_id or new_decision_id(self._key),
            user_id=self._key,
            ts=self.now,
            policy=self._policy_name,
            policy_version=learner.policy_version,
            features_version=LAYOUT_VERSION,
            context=self.x.tolist(),
            choices=self._choices,
            shadow_policy=learner.shadow_name if self._shadows else None,
            groups=self._groups(),
            layout=learner.layout.layout_id,
            catalog_version=learner.catalog_version,
        )

    def _groups(self) -> dict[str, str]:
        """The decision's audience for the bias audit: the request's, else the profile's."""
        groups = {}
        for name in AUDIENCE_FIELDS:
            value = self.context.get(name) or (getattr(self.user, name) if self.user is not None else None)
            if isinstance(value, str) and value:
                groups[name] = value[:32]
        return groups


class Learner:
    """A shard's served (and shadow) policy per decision point, over the merged statistics.

    Decision points: ``step`` (arms: the journey's steps; when ``learning.steps``) and
    ``tutorial:<id>`` (arms: its variants).
    """

    def __init__(self, catalog: Catalog, decider: StepRules, seed: int = 0, catalog_version: int = 0) -> None:
        self.settings = catalog.learning
        #: The stored catalog version this learner was built from (logged with each decision).
        self.catalog_version = catalog_version
        self.decider = decider
        #: The context vector the policies choose in (the catalog's built-in and declared features).
        self.layout = FeatureLayout.from_catalog(catalog)
        #: Feature names by layout id: ours, the built-in one, and every layout registered
        #: (:meth:`register_layout`), so a record or state of another layout is read by name.
        self.layouts: dict[str, tuple[str, ...]] = {
            BUILTIN_LAYOUT.layout_id: BUILTIN_LAYOUT.names,
            self.layout.layout_id: self.layout.names,
        }
        self._remaps: dict[tuple[str, ...], np.ndarray] = {}
        self._drift_slots = tuple((name, self.layout.index(name)) for name in DRIFT_FEATURES)
        self.steps = {s.id: s for s in catalog.journey.steps}
        self.points: dict[str, list[str]] = {}
        if self.settings.steps:
            self.points[POINT_STEP] = [s.id for s in catalog.journey.steps]
        for tutorial in catalog.tutorials:
            self.points[tutorial_point(tutorial.id)] = [v.id for v in tutorial.variants]
        self.arm_index = {
            point: {arm: i for i, arm in enumerate(arms)} for point, arms in self.points.items()
        }
        self.policy_name = self.settings.policy
        self.shadow_name = self.settings.shadow
        params, shadow_params = self.settings.params, self.settings.shadow_params
        self.served = {
            p: self._make(self.policy_name, p, seed + i, params) for i, p in enumerate(self.points)
        }
        self.shadows = (
            {
                p: self._make(self.shadow_name, p, seed + 1000 + i, shadow_params)
                for i, p in enumerate(self.points)
            }
            if self.shadow_name
            else {}
        )
        self.policy_version = next(iter(self.served.values())).version if self.served else 1
        self._by_name = {self.policy_name: self.served}
        if self.shadow_name:
            self._by_name[self.shadow_name] = self.shadows
        #: What each partition's owner last published: partition -> (sequence, contributions).
        self.views: dict[int, tuple[int, Contributions]] = {}
        #: Each partition's activation model as last published (raw-space weights, examples).
        self.activation_views: dict[int, tuple[np.ndarray, int]] = {}
        #: Activation probability every shard serves: all partitions' River models, averaged.
        self.activation = MergedActivation(self.layout.dim)
        #: Statistics forgotten after drifts (subtracted from the sum), and the partition
        #: sequences they were computed at: applied once every view has caught up with them.
        self.forgotten: Contributions = {}
        self.forgotten_seqs: dict[int, int] = {}
        self._pending_forgotten: tuple[Contributions, dict[int, int]] | None = None
        #: Served points whose policy detected a drop since the last :meth:`take_drifts`.
        self.drifted: set[str] = set()
        #: Called with every decision closed by its immediate reward (for the decisions log's
        #: replay in ``headstart evaluate``): decision id, point, arm, context, reward, logged
        #: propensity.
        self.on_close: Callable[[str, str, int, np.ndarray, float, float], None] | None = None
        #: Called with every activation outcome the activation model learns: decision id,
        #: context, activated.
        self.on_outcome: Callable[[str, np.ndarray, bool], None] | None = None
        self.rewards = 0
        self.reward_sum = 0.0
        self._feature_detectors: dict[str, dict[str, drift.ADWIN]] = {}
        #: Detected changes in a key feature's distribution, by "<point>/<feature>".
        self.feature_drifts: dict[str, int] = {}

    def _make(self, name: str, point: str, seed: int, params: dict[str, float | int | bool]) -> Policy:
        dim = self.layout.dim if available()[name].contextual else 0
        return create(name, self.points[point], dim=dim, seed=seed, **params)

    def policies_by_name(self) -> dict[str, dict[str, Policy]]:
        """The served and the shadow policies by policy name (built once: they never change)."""
        return self._by_name

    # ------------------------------------------------------------------ a new catalog version

    def carry_over(self, old: Learner) -> set[str]:
        """Take over what ``old`` (the learner of the previous catalog version) knows: the
        layouts registered, the other partitions' published contributions, what drifts forgot
        and the counters, read in this learner's layout and arms by name (:meth:`in_layout`).

        A point whose policy is unchanged (the same arms, policy, parameters and feature
        layout) keeps ``old``'s policy object itself: its statistics, random generator and drift
        detector go on exactly as if the catalog had not changed. Returns the points that did
        not keep theirs: their statistics are loaded by the next :meth:`rebuild` (once the
        partitions' contributions are in this learner's shape).
        """
        names, arms = old.layout.names, old.points
        self.layouts.update(old.layouts)
        self.views = {p: (seq, self.in_layout(c, names, arms)) for p, (seq, c) in old.views.items()}
        self.activation_views = {}
        for p, (weights, examples) in old.activation_views.items():
            moved = self._activation_in_layout(weights, names)
            if moved is not None:
                self.activation_views[p] = (moved, examples)
        self.forgotten = self.in_layout(old.forgotten, names, arms)
        self.forgotten_seqs = dict(old.forgotten_seqs)
        if old._pending_forgotten is not None:
            pending, seqs = old._pending_forgotten
            self._pending_forgotten = (self.in_layout(pending, names, arms), seqs)
        self.rewards, self.reward_sum = old.rewards, old.reward_sum
        self.feature_drifts = dict(old.feature_drifts)
        self.on_close, self.on_outcome = old.on_close, old.on_outcome
        same_policies = (
            names == self.layout.names
            and (old.policy_name, old.shadow_name) == (self.policy_name, self.shadow_name)
            and old.settings.params == self.settings.params
            and old.settings.shadow_params == self.settings.shadow_params
        )
        changed = set(self.points)
        if same_policies:
            for point, arms_now in self.points.items():
                if arms.get(point) != arms_now:
                    continue
                self.served[point] = old.served[point]
                if point in old.shadows:
                    self.shadows[point] = old.shadows[point]
                if point in old._feature_detectors:
                    self._feature_detectors[point] = old._feature_detectors[point]
                changed.discard(point)
        return changed

    # ------------------------------------------------------------------ feature layouts

    def register_layout(self, names: Sequence[str]) -> str:
        """Know the layout of these feature names (another catalog's); its id."""
        names = tuple(names)
        ident = layout_id(names)
        self.layouts[ident] = names
        return ident

    def remap_from(self, names: Sequence[str]) -> np.ndarray | None:
        """How to read a vector of the layout ``names`` in ours (:func:`engine.features.remap`);
        None: it is ours."""
        names = tuple(names)
        if names == self.layout.names:
            return None
        index = self._remaps.get(names)
        if index is None:
            index = self._remaps[names] = remap_index(names, self.layout.names)
        return index

    def context_of(self, record: DecisionRecord) -> np.ndarray | None:
        """A logged decision's context in our layout, read by feature name; None when its
        layout is not known here (nothing can be learned from it)."""
        names = record_names(record.layout, record.features_version, self.layouts)
        if names is None or len(names) != len(record.context):
            return None
        x = np.asarray(record.context, dtype=float)
        index = self.remap_from(names)
        return x if index is None else remap(x, index)

    def in_layout(
        self, contributions: Contributions, names: Sequence[str], arms: Arms | None = None
    ) -> Contributions:
        """Statistics learned with the layout ``names`` (and the arms ``arms``), read in ours
        by feature name and by arm name (:func:`remap_arms`).

        A policy's statistics are only valid with the layout they were learned on. Linear
        statistics (Σ x xᵀ, Σ r·x) remap exactly (see :func:`engine.features.remap`), so a
        catalog change that adds, drops or reorders features keeps what was learned about the
        features both layouts share; statistics without feature axes (counts) are the same in
        every layout. Statistics whose size does not match ``names`` are left as they are, and
        a merge or restore skips them for their shape (they start fresh). Statistics recorded
        without arm names (before they were recorded) are left as they are: the same shape is
        read as the same arms.
        """
        in_ours = self._features_in_layout(contributions, names)
        if not arms:
            return in_ours
        out: Contributions = {}
        for name, points in in_ours.items():
            out[name] = {}
            for point, stats in points.items():
                recorded, ours = arms.get(point), self.points.get(point)
                moved = None if recorded is None or ours is None else remap_arms(stats, recorded, ours)
                out[name][point] = moved if moved is not None else stats
        return out

    def _features_in_layout(self, contributions: Contributions, names: Sequence[str]) -> Contributions:
        index = self.remap_from(names)
        if index is None:
            return contributions
        policies = available()
        out: Contributions = {}
        for name, points in contributions.items():
            axes = policies[name].feature_axes if name in policies else {}
            out[name] = {}
            for point, stats in points.items():
                if any(
                    stats[k].shape[a] != len(names) for k, along in axes.items() if k in stats for a in along
                ):
                    out[name][point] = stats
                    continue
                out[name][point] = {k: remap(v, index, axes[k]) if k in axes else v for k, v in stats.items()}
        return out

    def _activation_in_layout(self, weights: np.ndarray, names: Sequence[str]) -> np.ndarray | None:
        if len(weights) != len(names):
            return None
        index = self.remap_from(names)
        return weights if index is None else remap(weights, index)

    # ------------------------------------------------------------------ deciding

    def session(
        self,
        user_key: str,
        user: UserState | None,
        context: Mapping[str, Any] | None,
        now: float,
        open_arms: Mapping[str, tuple[str, str]],
        vocab: Vocabularies | None = None,
    ) -> ChoiceSession:
        """The choices of one request; ``vocab``: the user's partition's vocabularies (the
        declared features read the user's custom fields and counts through them)."""
        return ChoiceSession(self, user_key, user, context, now, open_arms, vocab)

    # ------------------------------------------------------------------ learning

    def observe(self, point: str, x: np.ndarray, arm: int, reward: float, weight: float) -> None:
        """A reward credited by one of this shard's partitions: learn it now (between merges)."""
        policy = self.served.get(point)
        if policy is None:
            return
        drifts = policy.drifts
        policy.update(x if policy.contextual else None, arm, reward, weight)
        if policy.drifts != drifts:
            self.drifted.add(point)
        shadow = self.shadows.get(point)
        if shadow is not None:
            shadow.update(x if shadow.contextual else None, arm, reward, weight)
        self.rewards += 1
        self.reward_sum += reward * weight

    def empty(self) -> Contributions:
        return {
            name: {point: policy.zero_stats() for point, policy in policies.items()}
            for name, policies in self.policies_by_name().items()
        }

    def totals(self, owned: Mapping[int, PartitionLearning]) -> tuple[Contributions, dict[int, int]]:
        """The sum of every partition's contribution (owned ones live) and the sequences used."""
        total = self.empty()
        seqs: dict[int, int] = {}
        sources: list[tuple[int, int, Contributions]] = [
            (p, part.seq, part.contributions) for p, part in owned.items()
        ]
        sources += [(p, seq, c) for p, (seq, c) in self.views.items() if p not in owned]
        for p, seq, contributions in sources:
            seqs[p] = seq
            for name, points in contributions.items():
                for point, stats in points.items():
                    target = total.get(name, {}).get(point)
                    if target is None or any(target[k].shape != v.shape for k, v in stats.items()):
                        continue  # another catalog's arms: not this policy's statistics
                    for k, v in stats.items():
                        target[k] += v
        return total, seqs

    def rebuild(self, owned: Mapping[int, PartitionLearning], points: Iterable[str] | None = None) -> None:
        """Serve the merged statistics: the sum of all contributions less what was forgotten
        (of ``points`` only, when given: the others keep what they serve)."""
        total, seqs = self.totals(owned)
        pending = self._pending_forgotten
        if pending is not None and all(seqs.get(p, 0) >= s for p, s in pending[1].items()):
            self.forgotten, self.forgotten_seqs = pending
            self._pending_forgotten = None
        models = {p: v for p, v in self.activation_views.items() if p not in owned}
        models.update((p, part.activation.raw_params()) for p, part in owned.items())
        self.activation.load(models.values())
        only = None if points is None else set(points)
        for name, policies in self.policies_by_name().items():
            for point, policy in policies.items():
                if only is not None and point not in only:
                    continue
                stats = total[name][point]
                minus = self.forgotten.get(name, {}).get(point)
                if minus is not None and all(minus[k].shape == v.shape for k, v in stats.items()):
                    stats = {k: v - minus[k] for k, v in stats.items()}
                policy.load_stats(stats)

    def take_drifts(self, owned: Mapping[int, PartitionLearning]) -> bytes | None:
        """After a detected drift: the new ``forgotten`` record to share (None if no drift).

        The drifted policies already forgot locally; what they forgot is the difference between
        the sum they were built from and what they serve now, taken in one step.
        """
        if not self.drifted:
            return None
        total, seqs = self.totals(owned)
        forgotten = {name: dict(points) for name, points in self.forgotten.items()}
        for point in self.drifted:
            for name, policies in self.policies_by_name().items():
                policy = policies[point]
                forgotten.setdefault(name, {})[point] = {
                    k: total[name][point][k] - policy.stats[k] for k in policy.stats
                }
        self.drifted.clear()
        self.forgotten, self.forgotten_seqs = forgotten, seqs
        self._pending_forgotten = None
        return encode_contributions(seqs, forgotten, layout=self.layout.names, arms=self.points)

    def load_forgotten(self, data: bytes) -> None:
        """A ``forgotten`` record shared by any shard: applied at the next rebuild that has
        seen every partition as far as the record did."""
        seqs, forgotten, names, arms = decode_contributions(data)
        self._pending_forgotten = (self.in_layout(forgotten, names, arms), seqs)

    def set_view(self, partition: int, data: bytes) -> None:
        seqs, contributions, names, arms = decode_contributions(data)
        seq = seqs.get(partition, 0)
        if partition not in self.views or self.views[partition][0] <= seq:
            self.views[partition] = (seq, self.in_layout(contributions, names, arms))
            activation = msgspec.msgpack.decode(data).get("activation")
            if activation:
                weights = self._activation_in_layout(np.frombuffer(activation[0], dtype=float).copy(), names)
                if weights is not None:
                    self.activation_views[partition] = (weights, activation[1])
                else:
                    self.activation_views.pop(partition, None)

    def drift_counts(self) -> dict[str, int]:
        return {point: policy.drifts for point, policy in self.served.items()}

    def watch_features(self, point: str, x: np.ndarray) -> None:
        """Feed the key features of a decision's context to their drift detectors (River's
        ADWIN, per point and feature): a change in who reaches a decision (say, a campaign
        brings mobile users) is counted in ``feature_drifts`` for `/metrics` and `status`.
        The policies adapt to it by themselves (the features are in their context); only a
        drop in the reward rate makes them forget."""
        detectors = self._feature_detectors.get(point)
        if detectors is None:
            detectors = self._feature_detectors[point] = {
                name: drift.ADWIN(delta=FEATURE_DRIFT_DELTA)  # type: ignore[no-untyped-call]
                for name in DRIFT_FEATURES
            }
        for name, slot in self._drift_slots:
            detector = detectors[name]
            detector.update(float(x[slot]))  # type: ignore[no-untyped-call]
            if detector.drift_detected:
                key = f"{point}/{name}"
                self.feature_drifts[key] = self.feature_drifts.get(key, 0) + 1

    # ------------------------------------------------------------------ attribution rules

    def step_done(self, step_id: str, user: UserState, vocab: Vocabularies) -> bool:
        step = self.steps.get(step_id)
        return step is not None and self.decider.completed(step, user, vocab)

    def has_activated(self, user: UserState, vocab: Vocabularies) -> bool:
        """Whether the user's live state shows the journey's activation (for reports)."""
        journey = self.settings.journey
        name = journey.name
        if journey.event == "onboarding_completed":
            return user.count(EventKind.ONBOARDING_COMPLETED) > 0
        if journey.event == "feature_clicked":
            return (
                user.feature_count(vocab.features.find(name)) > 0
                if name
                else user.count(EventKind.FEATURE_CLICKED) > 0
            )
        if journey.event == "step_completed":
            ident = vocab.steps.find(name) if name else None
            return (
                bool(user.completed_steps >> ident & 1)
                if ident is not None
                else (name is None and user.completed_steps > 0)
            )
        if journey.event == "tutorial_completed":
            return user.count(EventKind.TUTORIAL_COMPLETED) > 0
        return seen(user, vocab, journey.event, journey.props)  # a declared type

    def is_activation(self, event: Event) -> bool:
        journey = self.settings.journey
        if event.type_name != journey.event:
            return False
        if journey.props:  # a declared type's props
            return props_match(event, journey.props)
        if journey.name is None:
            return True
        props = getattr(event, "props", None)
        return bool(journey.name in (getattr(props, "feature", None), getattr(props, "step", None)))


def encode_contributions(
    seqs: Mapping[int, int],
    contributions: Contributions,
    activation: tuple[np.ndarray, int] | None = None,
    layout: Sequence[str] = BUILTIN_LAYOUT.names,
    arms: Arms | None = None,
) -> bytes:
    """Statistics (and activation weights) as published and snapshotted, with the feature names
    (``layout``) and the arms of each point (``arms``) they were learned with: another catalog
    reads them by name."""
    body: dict[str, Any] = {
        "seqs": {str(p): s for p, s in seqs.items()},
        "activation": [activation[0].tobytes(), activation[1]] if activation is not None else None,
        # Points nothing was learned at are left out (a partition's contribution to a linear
        # policy is ~14 KB per point even when all zeros); missing points read as zeros.
        "policies": {
            name: {
                point: pack_stats(stats)
                for point, stats in points.items()
                if any(v.any() for v in stats.values())
            }
            for name, points in contributions.items()
        },
    }
    # The built-in layout's names are left out: what was written before layouts were named
    # holds it, so the default catalog's state keeps its bytes.
    if tuple(layout) != BUILTIN_LAYOUT.names:
        body["layout"] = list(layout)
    if arms:
        body["arms"] = {point: list(names) for point, names in arms.items()}
    return _encoder.encode(body)


def decode_contributions(
    data: bytes,
) -> tuple[dict[int, int], Contributions, tuple[str, ...], dict[str, list[str]]]:
    """Sequences, statistics, the feature names and the arms (per point; empty: not recorded,
    written before arms were) they were learned with."""
    raw = msgspec.msgpack.decode(data)
    return (
        {int(p): s for p, s in raw["seqs"].items()},
        {
            name: {point: unpack_stats(packed) for point, packed in points.items()}
            for name, points in raw["policies"].items()
        },
        tuple(raw.get("layout") or BUILTIN_LAYOUT.names),
        {point: list(names) for point, names in (raw.get("arms") or {}).items()},
    )


# ---------------------------------------------------------------------- per partition


class OpenDecision(msgspec.Struct, array_like=True):
    decision_id: str
    point: str
    arm: int
    x: bytes  # the context vector, float64
    ts: float
    deadline: float
    propensity: float = 1.0


class PathEntry(msgspec.Struct, array_like=True):
    decision_id: str
    point: str
    arm: int
    x: bytes
    deadline: float


_E = TypeVar("_E", OpenDecision, PathEntry)


class PartitionLearning:
    """A partition's open decisions, paths and contribution. Pure; driven by the partition in
    stream order, so replaying the stream rebuilds it exactly."""

    __slots__ = (
        "_closed",
        "_insights",
        "_journeys",
        "_windows",
        "activation",
        "contributions",
        "counts",
        "learner",
        "open",
        "path",
        "recommender",
        "seq",
    )

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.contributions: Contributions = learner.empty()
        self.open: dict[str, list[OpenDecision]] = {}
        self.path: dict[str, list[PathEntry]] = {}
        self._windows: list[tuple[float, str, str]] = []  # (deadline, decision id, user)
        self._journeys: list[tuple[float, str, str]] = []
        self._closed: dict[str, None] = {}
        #: The partition's last applied sequence when this was last changed (for merges).
        self.seq = 0
        self.activation = ActivationModel(learner.layout.names)
        self.recommender = FeatureRecommender()
        self._insights: dict[str, tuple[tuple[Any, ...], float, dict[str, Any]]] = {}
        self.counts = {"decisions": 0, "rewards": 0, "explicit": 0, "defaulted": 0, "late": 0, "unknown": 0}

    def rebind(self, learner: Learner) -> bool:
        """Serve on under ``learner`` (another catalog version's) with this state as it is, if
        its statistics have that learner's shape: the same decision points and arms, feature
        layout and policies (a catalog version that changed none of them: messages, flags,
        segments...). False: nothing changed, the partition builds a fresh component and loads
        this one's snapshot into it (read by arm and feature name)."""
        before = self.learner
        if (
            before.points != learner.points
            or before.layout.names != learner.layout.names
            or before.policies_by_name().keys() != learner.policies_by_name().keys()
        ):
            return False
        self.learner = learner
        return True

    # ------------------------------------------------------------------ inputs, in stream order

    def on_decision(self, user_key: str, record: DecisionRecord, seq: int) -> None:
        learner = self.learner
        x = learner.context_of(record)
        if x is None:
            return  # a layout not known here: nothing these policies can learn from
        xb = x.tobytes()
        window = learner.settings.reward_window_s
        horizon = learner.settings.journey.within_days * 86400.0
        open_now = self.open.setdefault(user_key, [])
        for choice in record.choices:
            index = learner.arm_index.get(choice.point)
            if index is None or choice.arm not in index:
                continue
            if any(d.point == choice.point for d in open_now):
                continue  # a concurrent decision already holds this point: it gets the reward
            deadline = record.ts + window
            open_now.append(
                OpenDecision(
                    record.decision_id,
                    choice.point,
                    index[choice.arm],
                    xb,
                    record.ts,
                    deadline,
                    choice.propensity,
                )
            )
            heapq.heappush(self._windows, (deadline, record.decision_id, user_key))
            if learner.settings.journey.weight > 0:
                path = self.path.setdefault(user_key, [])
                path.append(
                    PathEntry(record.decision_id, choice.point, index[choice.arm], xb, record.ts + horizon)
                )
                del path[:-MAX_PATH]
                heapq.heappush(self._journeys, (record.ts + horizon, record.decision_id, user_key))
            self.counts["decisions"] += 1
        if not open_now:
            del self.open[user_key]
        self.seq = seq
        self.advance(record.ts, seq)

    def on_reward(self, user_key: str, record: RewardRecord, seq: int) -> None:
        closing = [d for d in self.open.get(user_key, ()) if d.decision_id == record.decision_id]
        if not closing:
            self.counts["late" if record.decision_id in self._closed else "unknown"] += 1
            return
        for decision in closing:
            self._close(user_key, decision, record.reward)
        self.counts["explicit"] += 1
        self.seq = seq

    def on_record(self, user_key: str, record: object, seq: int) -> None:
        """A decision or an explicit reward, in stream order (other records are not ours)."""
        if isinstance(record, RewardRecord):
            self.on_reward(user_key, record, seq)
        elif isinstance(record, DecisionRecord):
            if record.user_id != user_key:
                raise InvalidEvent("key_mismatch", "decision user_id does not match the subject's user key")
            self.on_decision(user_key, record, seq)

    def on_event(
        self, user_key: str, user: UserState, event: Event, seq: int, vocab: Vocabularies, changed: int
    ) -> None:
        """After ``event`` was applied to ``user``: the windows its time closes, then what it earns.

        On the event path for every event: the common case (nothing due, no open decision)
        costs a few comparisons.
        """
        ts = event.ts
        windows, journeys = self._windows, self._journeys
        if (windows and windows[0][0] <= ts) or (journeys and journeys[0][0] <= ts):
            self.advance(ts, seq)
        decisions = self.open.get(user_key) if self.open else None
        if decisions:
            for decision in list(decisions):
                if self._earned(decision, user, event, vocab):
                    self._close(user_key, decision, 1.0)
                    self.seq = seq
            if event.kind is EventKind.SURFACE_DISMISSED:
                for decision in self._declined(decisions, event):
                    self._close(user_key, decision, 0.0)
                    # Closed with 0 by a dismissal (a key once there is one: snapshots of a
                    # stream without the in-app kit keep their layout).
                    self.counts["dismissed"] = self.counts.get("dismissed", 0) + 1
                    self.seq = seq
        if self.path and user_key in self.path and self.learner.is_activation(event):
            self._credit_path(user_key, 1.0)
            self.seq = seq
        # The user's first use of a feature (a first event of a custom type is a FIRST_USE too,
        # but not an adoption the recommender ranks).
        if changed & FIRST_USE and event.kind is EventKind.FEATURE_CLICKED:
            self._learn_adoption(user_key, user, event, vocab, seq)

    def advance(self, now: float, seq: int) -> None:
        """Close the reward windows and journeys that ended by event time ``now``."""
        windows = self._windows
        while windows and windows[0][0] <= now:
            _, decision_id, user_key = heapq.heappop(windows)
            for decision in [d for d in self.open.get(user_key, ()) if d.decision_id == decision_id]:
                self._close(user_key, decision, self.learner.settings.default_reward)
                self.counts["defaulted"] += 1
                self.seq = seq
        journeys = self._journeys
        while journeys and journeys[0][0] <= now:
            _, decision_id, user_key = heapq.heappop(journeys)
            path = self.path.get(user_key)
            if not path:
                continue
            ended = [e for e in path if e.decision_id == decision_id and e.deadline <= now]
            if ended:
                self._credit_entries(ended, 0.0)
                for entry in ended:
                    self._learn_outcome(entry, False)
                self._drop_path(user_key, ended)
                self.seq = seq

    # ------------------------------------------------------------------ crediting

    def _earned(self, decision: OpenDecision, user: UserState, event: Event, vocab: Vocabularies) -> bool:
        learner = self.learner
        if decision.point == POINT_STEP:
            return learner.step_done(learner.points[POINT_STEP][decision.arm], user, vocab)
        if event.kind is EventKind.TUTORIAL_COMPLETED:
            tutorial: str = event.props.tutorial  # type: ignore[attr-defined]
            return TUTORIAL_POINT_PREFIX + tutorial == decision.point
        return False

    @staticmethod
    def _declined(decisions: list[OpenDecision], event: Event) -> list[OpenDecision]:
        """The open decisions a dismissal answers with reward 0: the one that chose the variant
        of the tour or tooltip the user closed (named by ``props.decision_id`` when it is one of
        them, else the open decision at that tutorial's point)."""
        props = event.props  # type: ignore[attr-defined]
        if props.surface == "banner":
            return []
        point = TUTORIAL_POINT_PREFIX + props.id
        at_point = [d for d in decisions if d.point == point]
        named = [d for d in at_point if d.decision_id == props.decision_id]
        return named or at_point

    def _close(self, user_key: str, decision: OpenDecision, reward: float) -> None:
        decisions = self.open[user_key]
        decisions.remove(decision)
        if not decisions:
            del self.open[user_key]
        self._closed[decision.decision_id] = None
        if len(self._closed) > RECENTLY_CLOSED:
            del self._closed[next(iter(self._closed))]
        self._credit(decision.point, decision.arm, decision.x, reward, 1.0)
        if self.learner.on_close is not None:
            x = np.frombuffer(decision.x, dtype=float)
            self.learner.on_close(
                decision.decision_id, decision.point, decision.arm, x, reward, decision.propensity
            )

    def _credit_path(self, user_key: str, reward: float) -> None:
        entries = self.path.pop(user_key)
        self._credit_entries(entries, reward)
        for entry in entries:
            self._learn_outcome(entry, True)

    def _learn_outcome(self, entry: PathEntry, activated: bool) -> None:
        x = np.frombuffer(entry.x, dtype=float)
        self.activation.learn(x, activated)
        if self.learner.on_outcome is not None:
            self.learner.on_outcome(entry.decision_id, x, activated)

    def _learn_adoption(
        self, user_key: str, user: UserState, event: Event, vocab: Vocabularies, seq: int
    ) -> None:
        feature: str = event.props.feature  # type: ignore[attr-defined]
        # A negative example: a feature picked by the sequence (so a replay picks the same),
        # if the user has not tried it. Cheap on purpose: this runs on the event path.
        names = vocab.features.names
        pool = len(names) - 1 if len(names) <= 65 else 64  # features 1..64 ("(other)" is 0)
        candidate = 1 + seq % pool if pool > 1 else 0
        negative = names[candidate] if candidate and user.feature_count(candidate) == 0 else None
        self.recommender.add_adoption(user_key, feature, negative)

    @staticmethod
    def untried(user: UserState, vocab: Vocabularies) -> list[str]:
        """Features seen in this partition (the first 64) that ``user`` has not used."""
        names = vocab.features.names
        tried = user.feature_ids()
        return [names[i] for i in range(1, min(len(names), 65)) if i not in tried]

    def insights(
        self, user_key: str, user: UserState | None, vocab: Vocabularies, session: ChoiceSession
    ) -> dict[str, Any]:
        """The River models' view of a user: activation probability and features to try next.

        On every decision, so a user's answer is kept for up to :data:`INSIGHTS_TTL_S` while
        their state, the request's context and the models are unchanged (a frontend asks again
        on every page; recomputing was a third of a decision's CPU).
        """
        context = session.context
        stamp = (
            user.last_seen if user is not None else 0.0,
            self.recommender.adoptions,
            self.learner.activation.examples,
            *map(context.get, self.learner.layout.request_fields),
        )
        cached = self._insights.get(user_key)
        now = session.now
        if cached is not None and cached[0] == stamp and now - cached[1] < INSIGHTS_TTL_S:
            return cached[2]
        activation = self.learner.activation
        probability = activation.predict(session.x) if activation.examples else None  # x only if needed
        untried = self.untried(user, vocab) if user is not None else []
        answer = {
            "activation_probability": None if probability is None else round(probability, 4),
            "recommended_features": self.recommender.recommend(user_key, untried),
        }
        if len(self._insights) >= INSIGHTS_CACHE:
            self._insights.clear()
        self._insights[user_key] = (stamp, now, answer)
        return answer

    def _credit_entries(self, entries: Iterable[PathEntry], reward: float) -> None:
        weight = self.learner.settings.journey.weight
        for entry in entries:
            self._credit(entry.point, entry.arm, entry.x, reward, weight)

    def _drop_path(self, user_key: str, entries: list[PathEntry]) -> None:
        path = [e for e in self.path[user_key] if e not in entries]
        if path:
            self.path[user_key] = path
        else:
            del self.path[user_key]

    def _credit(self, point: str, arm: int, xb: bytes, reward: float, weight: float) -> None:
        learner = self.learner
        x = np.frombuffer(xb, dtype=float)
        for name, policies in learner.policies_by_name().items():
            policy = policies[point]
            policy.accumulate(
                self.contributions[name][point], x if policy.contextual else None, arm, reward, weight
            )
        learner.observe(point, x, arm, reward, weight)
        self.counts["rewards"] += 1

    # ------------------------------------------------------------------ users and state

    def open_arms(self, user_key: str) -> dict[str, tuple[str, str]]:
        """Point -> (decision id, arm) of the user's open decisions."""
        points = self.learner.points
        return {d.point: (d.decision_id, points[d.point][d.arm]) for d in self.open.get(user_key, ())}

    def forget_user(
        self, user_key: str, user: UserState | None, now: float, origin: int | str, erase: bool = False
    ) -> None:
        """The user's open decisions and path go (what they taught the policy stays: it is
        aggregate statistics, not data about the user). Only for a user with a profile here: the
        open decisions of a key never seen close when their reward window ends."""
        if user is None:
            return
        self.open.pop(user_key, None)
        self.path.pop(user_key, None)
        self._insights.pop(user_key, None)
        self.recommender.forget_user(user_key)
        # Decision ids begin with the user's key (see new_decision_id).
        if any(d.startswith(user_key) for d in self._closed):
            self._closed = {d: None for d in self._closed if not d.startswith(user_key)}

    def published(self, partition: int) -> bytes:
        """The contribution as every shard loads it (:meth:`Learner.set_view`)."""
        learner = self.learner
        return encode_contributions(
            {partition: self.seq},
            self.contributions,
            self.activation.raw_params(),
            learner.layout.names,
            learner.points,
        )

    def snapshot(self) -> dict[str, Any]:
        names = self.learner.layout.names
        snap = {
            "seq": self.seq,
            "contributions": encode_contributions(
                {}, self.contributions, layout=names, arms=self.learner.points
            ),
            # One call each (not one per entry): a catalog switch snapshots every partition.
            "open": msgspec.to_builtins(self.open),
            "path": msgspec.to_builtins(self.path),
            "closed": list(self._closed),
            "counts": self.counts,
            "activation": self.activation.snapshot(),
            "recommender": self.recommender.snapshot(),
        }
        if names != BUILTIN_LAYOUT.names:  # as in encode_contributions: absent, the built-in layout
            snap["layout"] = list(names)
        return snap

    def restore(self, snap: dict[str, Any] | None, users: Mapping[str, UserState] | None = None) -> None:
        """Load a :meth:`snapshot` into this fresh state (None: nothing to load); statistics of
        a point or policy whose shape changed since are left out.

        State of another feature layout (the catalog's features changed) is read by feature
        name: the policies' statistics and the open decisions' contexts are remapped (a feature
        new to the layout reads 0), the activation model keys its weights by name already. State
        recorded with its arms' names (the catalog's steps or variants changed) is read by arm
        name: statistics of a kept arm stay, a new arm starts at zero, a removed arm's go, and an
        open decision or path entry keeps its arm (or goes with it, or with its point).
        """
        if not snap:
            return
        learner = self.learner
        self.seq = snap["seq"]
        _, contributions, names, arms = decode_contributions(snap["contributions"])
        for name, points in learner.in_layout(contributions, names, arms).items():
            for point, stats in points.items():
                current = self.contributions.get(name, {}).get(point)
                if current is not None and all(current[k].shape == v.shape for k, v in stats.items()):
                    self.contributions[name][point] = stats
        self.open = msgspec.convert(snap["open"], dict[str, list[OpenDecision]])
        self.path = msgspec.convert(snap["path"], dict[str, list[PathEntry]])
        if arms and arms != learner.points:  # recorded with other arms: by name, or dropped
            self.open = _with_arms(self.open, arms, learner.arm_index)
            self.path = _with_arms(self.path, arms, learner.arm_index)
        names = tuple(snap.get("layout") or BUILTIN_LAYOUT.names)
        index = learner.remap_from(names)
        if index is not None:
            self._remap_contexts(names, index)
        self._windows = [(d.deadline, d.decision_id, k) for k, v in self.open.items() for d in v]
        self._journeys = [(e.deadline, e.decision_id, k) for k, v in self.path.items() for e in v]
        heapq.heapify(self._windows)
        heapq.heapify(self._journeys)
        self._closed = dict.fromkeys(snap["closed"])
        self.counts.update(snap["counts"])
        self.activation = ActivationModel.restore(snap["activation"], learner.layout.names)
        self.recommender = FeatureRecommender.restore(snap["recommender"])

    def _remap_contexts(self, names: tuple[str, ...], index: np.ndarray) -> None:
        """The open decisions' and paths' contexts, of the layout ``names``, in ours; a context
        of another length than ``names`` (nothing can read it) goes with its entry."""

        def mapped(xb: bytes) -> bytes | None:
            x = np.frombuffer(xb, dtype=float)
            return remap(x, index).tobytes() if len(x) == len(names) else None

        self.open = _with_contexts(self.open, mapped)
        self.path = _with_contexts(self.path, mapped)


def _with_arms(
    entries: dict[str, list[_E]], arms: Mapping[str, Sequence[str]], index: Mapping[str, Mapping[str, int]]
) -> dict[str, list[_E]]:
    """Open decisions or path entries recorded over ``arms`` (per point), their arm read by name
    in ``index``; an entry whose arm or point is gone goes."""

    def moved(item: _E) -> bool:
        recorded, ours = arms.get(item.point), index.get(item.point)
        if ours is None or recorded is None or not 0 <= item.arm < len(recorded):
            return False
        arm = ours.get(recorded[item.arm])
        if arm is None:
            return False
        item.arm = arm
        return True

    return _kept(entries, moved)


def _with_contexts(
    entries: dict[str, list[_E]], mapped: Callable[[bytes], bytes | None]
) -> dict[str, list[_E]]:
    """The entries with their contexts mapped; one whose context cannot be (None) goes."""

    def moved(item: _E) -> bool:
        x = mapped(item.x)
        if x is None:
            return False
        item.x = x
        return True

    return _kept(entries, moved)


def _kept(entries: dict[str, list[_E]], keep: Callable[[_E], bool]) -> dict[str, list[_E]]:
    """Per user, the entries ``keep`` (which may update them) keeps; users left with none go."""
    out: dict[str, list[_E]] = {}
    for key, items in entries.items():
        kept = [item for item in items if keep(item)]
        if kept:
            out[key] = kept
    return out
