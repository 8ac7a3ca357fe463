"""Experiments: deterministic assignment and the statistics of their analysis.

Assignment hashes the user's (pseudonymized) key with the experiment's salt, so it is the same
on every shard, after restarts and rescaling, with nothing stored:

- a **layer** splits users between the experiments that must not overlap: each experiment owns
  a fixed range of the layer's hash space (``layer_range``), so changing one experiment leaves
  the others' users where they were;
- **traffic** then includes a share of the range's users by a second hash: raising it keeps
  everyone already included (and in the same arm), lowering it drops only the newest;
- the **arm** comes from a third hash and the arms' weights;
- a **holdout** (a share of all users, by its own salt) gets the default flow in every
  experiment.

An arm changes what a decision shows: the order of the journey's steps (``steps``), the
variants a tutorial may show (``tutorials``), the welcome message (``welcome``), or who chooses
(``policy``: ``fixed`` for the journey's and catalog's order, or a policy the shards run).
An arm that changes nothing is a control. A user is **exposed** the first time a decision
reaches what the experiment changes (its surfaces), whatever their arm, so control and
treatment are counted under the same condition; :class:`PartitionExperiments` keeps one
exposure per user and experiment, in stream order, and each exposed user's outcomes.

Analysis (:func:`analyze`) works on one row per exposed user (arm, outcome, pre-exposure
covariate): per arm the users, conversions and rate; against the control the lift with a
Welch confidence interval and p-value (scipy), the same after CUPED (the outcome adjusted by
its regression on the pre-exposure covariate, which removes the variance it explains), an
always-valid (sequential) confidence interval that may be looked at any number of times (a
mixture sequential probability ratio test, Johari et al., "Always valid inference", 2017),
a sample-ratio-mismatch check (chi-square against the arms' weights) and a verdict.

>>> exp = Experiment(id="welcome_copy", salt="s1", arms=[Arm(id="control"), Arm(id="short")])
>>> arm = exp.arm_for("user-key-1")
>>> arm in ("control", "short") and exp.arm_for("user-key-1") == arm
True
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import polars as pl
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from scipy import stats

from engine.event_refs import PropMatches, props_match
from engine.events import Event
from engine.profile import UserState, Vocabularies

#: Hash space resolution: assignment shares are exact to 1 in 10,000.
BUCKETS = 10_000
#: The always-valid interval's mixing variance, as a multiple of the outcome's variance per
#: user. Any value chosen before the data keeps the interval valid; this one makes it narrowest
#: at about 2,000 users per arm (where the mixing variance is ~8 times the estimate's variance;
#: Johari et al., section 4.2), about 1.5 times the fixed-horizon interval there.
MIXING_VARIANCE_SCALE = 0.008


def unit_hash(*parts: str) -> float:
    """A stable number in [0, 1) for ``parts`` (blake2b: fast, keyed by its inputs only)."""
    digest = hashlib.blake2b(":".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS / BUCKETS


#: What an experiment's arms can change in a decision (``tutorial:<id>`` per tutorial).
SURFACE_STEPS = "steps"
SURFACE_MESSAGE = "message"
SURFACE_POLICY = "policy"
#: An arm's ``policy`` that serves the journey's and catalog's order, no learning policy.
FIXED_POLICY = "fixed"

#: Events an experiment's metric can count, and the prop that names which one (if any).
METRIC_EVENTS = {
    "onboarding_completed": None,
    "session_started": None,
    "step_viewed": "step",
    "step_completed": "step",
    "feature_clicked": "feature",
    "tutorial_started": "tutorial",
    "tutorial_completed": "tutorial",
}


class Metric(BaseModel):
    """A conversion: ``event`` (named ``name``, if given) within ``within_days`` of exposure.

    ``event`` is one of :data:`METRIC_EVENTS` or a type the catalog's ``schema:`` declares,
    whose listed ``props`` must all equal the event's:

    >>> Metric(event="connected_integration", props={"integration": "slack"}).label
    'connected_integration(integration=slack) within 7 days'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field("onboarding_completed", min_length=1, max_length=64)
    name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    #: For a declared type: the props the event must have (each equal).
    props: PropMatches = Field(default_factory=dict)
    within_days: float = Field(7.0, gt=0, le=365)

    @property
    def label(self) -> str:
        which = self.name or ", ".join(f"{k}={v}" for k, v in self.props.items())
        return f"{self.event}{f'({which})' if which else ''} within {self.within_days:g} days"

    def matches(self, event: Event) -> bool:
        if event.type_name != self.event:
            return False
        if self.props:
            return props_match(event, self.props)
        prop = METRIC_EVENTS.get(self.event)
        props = getattr(event, "props", None)
        return self.name is None or prop is None or getattr(props, prop, None) == self.name


class Arm(BaseModel):
    """One variant of an experiment; ``weight`` is its share relative to the other arms; what
    it changes (nothing: a control)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]{1,40}$")
    weight: float = Field(1.0, gt=0)
    #: The journey's steps in the order this arm offers them (steps not listed are skipped).
    steps: list[str] | None = Field(None, min_length=1)
    #: The variants each tutorial may show in this arm (tutorial id -> variant ids).
    tutorials: dict[str, list[str]] | None = None
    #: The welcome message in this arm (locale -> template).
    welcome: dict[str, str] | None = None
    #: Who chooses steps and variants: ``fixed`` (catalog order) or a policy the shards run.
    policy: str | None = None

    def surfaces(self) -> set[str]:
        out = set()
        if self.steps is not None:
            out.add(SURFACE_STEPS)
        if self.welcome is not None:
            out.add(SURFACE_MESSAGE)
        if self.policy is not None:
            out.add(SURFACE_POLICY)
        out.update(f"tutorial:{t}" for t in self.tutorials or {})
        return out


class Experiment(BaseModel):
    """An experiment's assignment: salt, layer and range, traffic and arms (the first arm is
    the control the others are compared with)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]{1,40}$")
    salt: str = Field(min_length=1)
    arms: list[Arm] = Field(min_length=2)
    layer: str | None = Field(None, description="experiments of one layer never share a user")
    layer_range: tuple[float, float] = (0.0, 1.0)
    traffic: float = Field(1.0, ge=0.0, le=1.0, description="share of the layer range's users included")
    description: str = Field("", max_length=500)
    #: Only users in at least one of these segments take part (empty: everyone).
    segments: list[str] = Field(default_factory=list)
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    #: What the experiment is judged on; guardrails must not get worse.
    metric: Metric = Metric()
    guardrails: list[Metric] = Field(default_factory=list)

    @model_validator(mode="after")
    def _checked(self) -> Experiment:
        low, high = self.layer_range
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"layer_range must be within [0, 1] and not empty, got {self.layer_range}")
        ids = [a.id for a in self.arms]
        if len(set(ids)) != len(ids):
            raise ValueError(f"arm ids must be unique, got {ids}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    def surfaces(self) -> set[str]:
        """What the arms change: a decision that reaches one of these exposes the user."""
        return set().union(*(arm.surfaces() for arm in self.arms))

    def active(self, now: float) -> bool:
        return (self.start is None or now >= self.start.timestamp()) and (
            self.end is None or now < self.end.timestamp()
        )

    def arm(self, arm_id: str) -> Arm:
        return next(a for a in self.arms if a.id == arm_id)

    @property
    def control(self) -> str:
        return self.arms[0].id

    def weights(self) -> dict[str, float]:
        total = sum(a.weight for a in self.arms)
        return {a.id: a.weight / total for a in self.arms}

    def arm_for(self, user_key: str) -> str | None:
        """The user's arm, or None if the experiment does not include them."""
        low, high = self.layer_range
        if not low <= unit_hash(self.layer or self.id, "layer", user_key) < high:
            return None
        if unit_hash(self.salt, "traffic", user_key) >= self.traffic:
            return None
        point = unit_hash(self.salt, "arm", user_key) * sum(a.weight for a in self.arms)
        for arm in self.arms:
            point -= arm.weight
            if point < 0:
                return arm.id
        return self.arms[-1].id


def check_layers(experiments: Sequence[Experiment]) -> list[str]:
    """Problems with how experiments share layers: overlapping ranges in one layer."""
    problems = []
    by_layer: dict[str, list[Experiment]] = {}
    for exp in experiments:
        if exp.layer is not None:
            by_layer.setdefault(exp.layer, []).append(exp)
    for layer, members in by_layer.items():
        ordered = sorted(members, key=lambda e: e.layer_range[0])
        for before, after in itertools.pairwise(ordered):
            if after.layer_range[0] < before.layer_range[1]:
                problems.append(
                    f"layer {layer!r}: {before.id} {before.layer_range} and {after.id} "
                    f"{after.layer_range} overlap"
                )
    return problems


def in_holdout(user_key: str, salt: str, share: float) -> bool:
    """Whether a global holdout of ``share`` of all users (by ``salt``) holds the user."""
    return unit_hash(salt, "holdout", user_key) < share


class Holdout(BaseModel):
    """A share of all users (by its own salt) that gets the default flow in every experiment,
    to measure what the experiments together are worth."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(gt=0.0, lt=1.0)
    salt: str = Field(min_length=1)


class ExperimentPlan:
    """The catalog's experiments as a decision sees them: which arms a user is in now.

    >>> exp = Experiment(id="copy", salt="s", arms=[Arm(id="control"), Arm(id="short", welcome={"en": "Hi"})])
    >>> plan = ExperimentPlan([exp], Holdout(share=0.5, salt="h"))
    >>> [plan.in_holdout(k) for k in ("user-1", "user-2", "user-3")]
    [True, True, False]
    >>> plan.assign("user-1", ["new_user"], now=0.0)  # held out: the default flow
    []
    >>> [(e.id, a.id) for e, a in plan.assign("user-3", ["new_user"], now=0.0)]
    [('copy', 'control')]
    """

    def __init__(self, experiments: Sequence[Experiment], holdout: Holdout | None = None) -> None:
        self.experiments = list(experiments)
        self.by_id = {e.id: e for e in self.experiments}
        self.holdout = holdout
        self._surfaces = {e.id: frozenset(e.surfaces()) for e in self.experiments}

    def __bool__(self) -> bool:
        return bool(self.experiments)

    def in_holdout(self, user_key: str) -> bool:
        holdout = self.holdout
        return holdout is not None and in_holdout(user_key, holdout.salt, holdout.share)

    def assign(self, user_key: str, segments: Iterable[str], now: float) -> list[tuple[Experiment, Arm]]:
        """The running experiments that include the user now, each with the user's arm (none for
        a user in the holdout)."""
        if not self.experiments or self.in_holdout(user_key):
            return []
        member = set(segments)
        out = []
        for exp in self.experiments:
            if not exp.active(now) or (exp.segments and member.isdisjoint(exp.segments)):
                continue
            arm_id = exp.arm_for(user_key)
            if arm_id is not None:
                out.append((exp, exp.arm(arm_id)))
        return out

    def surfaces(self, experiment_id: str) -> frozenset[str]:
        return self._surfaces[experiment_id]


# ---------------------------------------------------------------------- exposures and outcomes


class ExposureRecord(msgspec.Struct):
    """A user's first exposure to an experiment (``hs.events.<p>.<key>-exposure``, and the
    exposures log ``hs.exposures.<p>.<key>``); ``pre`` is the user's engagement score at
    exposure, the pre-exposure covariate CUPED uses."""

    experiment: str
    arm: str
    user_id: str
    ts: float
    pre: float = 0.0


exposure_decoder = msgspec.msgpack.Decoder(ExposureRecord)
_exposure_encoder = msgspec.msgpack.Encoder()


def encode_exposure(record: ExposureRecord) -> bytes:
    return _exposure_encoder.encode(record)


class ExposedUser(msgspec.Struct, array_like=True):
    """One exposed user of one experiment: arm, when, the covariate, and when each metric
    (the primary first, then the guardrails) converted (0.0: not yet)."""

    arm: str
    ts: float
    pre: float
    converted: list[float]


class PartitionExperiments:
    """A partition's exposures, one per user and experiment (the first applied wins; a
    redelivered or concurrent second one changes nothing), and the exposed users' outcomes.

    Fed in stream order, so a replay rebuilds exactly this; outcomes are looked up only for
    exposed users (one dict lookup per event for everyone else).

    >>> exp = Experiment(id="copy", salt="s", arms=[Arm(id="control"), Arm(id="short")])
    >>> state = PartitionExperiments(ExperimentPlan([exp]))
    >>> record = ExposureRecord(experiment="copy", arm="short", user_id="k", ts=10.0, pre=2.5)
    >>> state.on_exposure("k", record), state.on_exposure("k", record)
    (True, False)
    >>> list(state.exposures("copy"))
    [ExposedUser(arm='short', ts=10.0, pre=2.5, converted=[0.0])]
    """

    __slots__ = ("exposed", "plan")

    def __init__(self, plan: ExperimentPlan) -> None:
        self.plan = plan
        #: user key -> experiment id -> the exposure and its outcomes.
        self.exposed: dict[str, dict[str, ExposedUser]] = {}

    def is_exposed(self, user_key: str, experiment_id: str) -> bool:
        return experiment_id in self.exposed.get(user_key, ())

    def on_exposure(self, user_key: str, record: ExposureRecord) -> bool:
        """Apply an exposure record; whether it was the user's first for that experiment."""
        exp = self.plan.by_id.get(record.experiment)
        if exp is None or not any(a.id == record.arm for a in exp.arms):
            return False  # an experiment or arm since removed from the catalog
        mine = self.exposed.setdefault(user_key, {})
        if record.experiment in mine:
            return False
        mine[record.experiment] = ExposedUser(
            record.arm, record.ts, record.pre, [0.0] * (1 + len(exp.guardrails))
        )
        return True

    def on_record(self, user_key: str, record: object, seq: int) -> None:
        """An exposure record, in stream order (other records are not ours)."""
        if isinstance(record, ExposureRecord):
            self.on_exposure(user_key, record)

    def on_event(
        self, user_key: str, user: UserState, event: Event, seq: int, vocab: Vocabularies, changed: int
    ) -> None:
        """Conversions of an exposed user (called for every applied event)."""
        mine = self.exposed.get(user_key)
        if mine is None:
            return
        for experiment_id, row in mine.items():
            exp = self.plan.by_id.get(experiment_id)
            if exp is None:
                continue
            for i, metric in enumerate((exp.metric, *exp.guardrails)):
                if (
                    not row.converted[i]
                    and row.ts <= event.ts <= row.ts + metric.within_days * 86400.0
                    and metric.matches(event)
                ):
                    row.converted[i] = event.ts

    def forget_user(
        self, user_key: str, user: UserState | None, now: float, origin: int | str, erase: bool = False
    ) -> None:
        """The user's exposures go (also of a user without a profile: exposed before any event)."""
        self.exposed.pop(user_key, None)

    def exposures(self, experiment_id: str) -> Iterable[ExposedUser]:
        for mine in self.exposed.values():
            row = mine.get(experiment_id)
            if row is not None:
                yield row

    def snapshot(self) -> dict[str, dict[str, ExposedUser]]:
        return self.exposed

    def restore(self, snap: dict[str, Any] | None, users: Mapping[str, UserState] | None = None) -> None:
        """Load a :meth:`snapshot` into this fresh state (None: nothing to load)."""
        for key, mine in (snap or {}).items():
            self.exposed[key] = {
                exp: ExposedUser(row[0], row[1], row[2], list(row[3])) for exp, row in mine.items()
            }


# ---------------------------------------------------------------------- analysis


class Moments(msgspec.Struct, array_like=True):
    """Sufficient statistics of one arm: count and sums of the outcome ``y``, the covariate
    ``x`` and their products. Every figure of the analysis (Welch, CUPED, the always-valid
    interval) comes from these, so shards send six numbers per arm, not a row per user.

    >>> m = Moments.of(np.array([1.0, 0.0, 1.0]), np.array([2.0, 0.0, 4.0]))
    >>> m.n, round(m.mean_y, 4), round(m.var_y(), 4), round(m.cov(), 4)
    (3, 0.6667, 0.3333, 1.0)
    """

    n: int = 0
    sy: float = 0.0
    syy: float = 0.0
    sx: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    @classmethod
    def of(cls, y: np.ndarray, x: np.ndarray) -> Moments:
        return cls(
            len(y),
            float(y.sum()),
            float((y * y).sum()),
            float(x.sum()),
            float((x * x).sum()),
            float((x * y).sum()),
        )

    def add(self, y: float, x: float) -> None:
        self.n += 1
        self.sy += y
        self.syy += y * y
        self.sx += x
        self.sxx += x * x
        self.sxy += x * y

    def merged(self, other: Moments) -> Moments:
        return Moments(
            self.n + other.n,
            self.sy + other.sy,
            self.syy + other.syy,
            self.sx + other.sx,
            self.sxx + other.sxx,
            self.sxy + other.sxy,
        )

    @property
    def mean_y(self) -> float:
        return self.sy / self.n if self.n else 0.0

    @property
    def mean_x(self) -> float:
        return self.sx / self.n if self.n else 0.0

    def _centered(self, sab: float, sa: float, sb: float, ddof: int) -> float:
        """Sum of centered products over (n - ddof), from raw sums (exact enough for
        conversions and engagement scores; the sums are float64)."""
        if self.n - ddof <= 0:
            return 0.0
        return (sab - sa * sb / self.n) / (self.n - ddof)

    def var_y(self, ddof: int = 1) -> float:
        return max(self._centered(self.syy, self.sy, self.sy, ddof), 0.0)

    def var_x(self, ddof: int = 1) -> float:
        return max(self._centered(self.sxx, self.sx, self.sx, ddof), 0.0)

    def cov(self, ddof: int = 1) -> float:
        return self._centered(self.sxy, self.sx, self.sy, ddof)

    def adjusted(self, theta: float, mean_x_all: float) -> tuple[float, float]:
        """The CUPED-adjusted outcome's mean and variance (ddof 1) in this arm."""
        mean = self.mean_y - theta * (self.mean_x - mean_x_all)
        var = self.var_y() + theta * theta * self.var_x() - 2 * theta * self.cov()
        return mean, max(var, 0.0)


def cuped_theta(total: Moments) -> float:
    """The regression coefficient of the outcome on the pre-exposure covariate, over all arms
    pooled (so the adjustment is the same for every arm)."""
    var = total.var_x()
    return total.cov() / var if var > 0 else 0.0


def cuped_adjusted(outcome: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    """The outcome minus what its linear regression on the pre-exposure covariate explains."""
    theta = cuped_theta(Moments.of(outcome.astype(float), covariate.astype(float)))
    adjusted: np.ndarray = outcome - theta * (covariate - covariate.mean())
    return adjusted


def welch(
    treatment: tuple[float, float, int], control: tuple[float, float, int], alpha: float
) -> dict[str, float]:
    """Difference of means (each given as mean, variance, n) with Welch's interval and p-value
    (scipy's t distribution, Welch-Satterthwaite degrees of freedom), and the relative lift."""
    (mt, vt, nt), (mc, vc, nc) = treatment, control
    diff = mt - mc
    se2 = vt / nt + vc / nc
    relative = diff / mc if mc else math.nan
    if se2 <= 0:
        return {
            "lift": diff,
            "lift_low": diff,
            "lift_high": diff,
            "relative_lift": relative,
            "p_value": float(diff == 0),
        }
    result = stats.ttest_ind_from_stats(mt, math.sqrt(vt), nt, mc, math.sqrt(vc), nc, equal_var=False)
    df = se2**2 / ((vt / nt) ** 2 / (nt - 1) + (vc / nc) ** 2 / (nc - 1))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * math.sqrt(se2)
    return {
        "lift": diff,
        "lift_low": diff - half,
        "lift_high": diff + half,
        "relative_lift": relative,
        "p_value": float(result.pvalue),
    }


def compare(treatment: np.ndarray, control: np.ndarray, alpha: float) -> dict[str, float]:
    """:func:`welch` on two samples."""
    return welch(
        (float(treatment.mean()), float(np.var(treatment, ddof=1)), len(treatment)),
        (float(control.mean()), float(np.var(control, ddof=1)), len(control)),
        alpha,
    )


def always_valid(
    treatment: tuple[float, float, int], control: tuple[float, float, int], alpha: float = 0.05
) -> tuple[float, float]:
    """An always-valid confidence interval for the difference of means (each given as mean,
    variance, n; mixture SPRT with a normal mixing distribution): its coverage holds however
    often, and whenever, it is looked at, so a team may stop as soon as it excludes zero."""
    (mt, vt, nt), (mc, vc, nc) = treatment, control
    if nt < 2 or nc < 2:
        return (-math.inf, math.inf)
    v = vt / nt + vc / nc
    diff = mt - mc
    if v == 0.0:
        return (diff, diff)
    tau2 = MIXING_VARIANCE_SCALE * (vt + vc) / 2
    half = math.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((v + tau2) / v)))
    return (diff - half, diff + half)


def always_valid_interval(
    treatment: np.ndarray, control: np.ndarray, alpha: float = 0.05
) -> tuple[float, float]:
    """:func:`always_valid` on two samples."""
    return always_valid(
        (
            float(treatment.mean()),
            float(np.var(treatment, ddof=1)) if len(treatment) > 1 else 0.0,
            len(treatment),
        ),
        (float(control.mean()), float(np.var(control, ddof=1)) if len(control) > 1 else 0.0, len(control)),
        alpha,
    )


def sample_ratio_mismatch(counts: dict[str, int], weights: dict[str, float]) -> float:
    """The p-value of the arms' user counts under their configured weights (chi-square)."""
    total = sum(counts.get(arm, 0) for arm in weights)
    if total == 0:
        return 1.0
    observed = [counts.get(arm, 0) for arm in weights]
    expected = [total * w for w in weights.values()]
    return float(stats.chisquare(observed, expected).pvalue)


def moments_by_arm(rows: pl.DataFrame) -> dict[str, Moments]:
    """Per arm, the :class:`Moments` of rows with columns ``arm``, ``outcome`` and ``pre``."""
    y, x = pl.col("outcome").cast(pl.Float64), pl.col("pre").cast(pl.Float64)
    sums = rows.group_by("arm").agg(
        pl.len().alias("n"),
        y.sum().alias("sy"),
        (y * y).sum().alias("syy"),
        x.sum().alias("sx"),
        (x * x).sum().alias("sxx"),
        (x * y).sum().alias("sxy"),
    )
    return {row[0]: Moments(*row[1:]) for row in sums.sort("arm").iter_rows()}


def analyze(
    rows: pl.DataFrame,
    weights: dict[str, float],
    control: str,
    alpha: float = 0.05,
    srm_alpha: float = 0.001,
) -> dict[str, Any]:
    """The report of one experiment from one row per exposed user: columns ``arm``,
    ``outcome`` (1/0 for a conversion, or a number) and ``pre`` (the pre-exposure covariate).

    >>> rng = np.random.default_rng(1)
    >>> arm = rng.choice(["c", "t"], 4000)
    >>> pre = rng.normal(size=4000)  # e.g. engagement before exposure, which predicts converting
    >>> converted = rng.random(4000) < 0.3 + 0.1 * (arm == "t") + 0.25 * pre.clip(-1, 1)
    >>> rows = pl.DataFrame({"arm": arm, "outcome": converted.astype(int), "pre": pre})
    >>> report = analyze(rows, {"c": 0.5, "t": 0.5}, control="c")
    >>> report["srm"]["mismatch"], report["verdict"].split(":")[0], report["cuped_variance_reduction"] > 0.1
    (False, 't wins', True)
    """
    return analyze_moments(moments_by_arm(rows), weights, control, alpha, srm_alpha)


def analyze_moments(
    moments: dict[str, Moments],
    weights: dict[str, float],
    control: str,
    alpha: float = 0.05,
    srm_alpha: float = 0.001,
) -> dict[str, Any]:
    """:func:`analyze` from each arm's :class:`Moments` (what shards send)."""
    total = Moments()
    for m in moments.values():
        total = total.merged(m)
    theta = cuped_theta(total)
    counts = {arm: m.n for arm, m in moments.items()}
    srm_p = sample_ratio_mismatch(counts, weights)
    base = moments.get(control, Moments())
    base_raw = (base.mean_y, base.var_y(), base.n)
    base_adj = (*base.adjusted(theta, total.mean_x), base.n)
    report: dict[str, Any] = {"control": control, "alpha": alpha, "arms": {}}
    for arm in sorted(moments):
        m = moments[arm]
        entry: dict[str, Any] = {"users": m.n, "conversions": m.sy, "rate": m.mean_y}
        if arm != control and m.n > 1 and base.n > 1:
            adjusted = (*m.adjusted(theta, total.mean_x), m.n)
            entry["fixed"] = welch((m.mean_y, m.var_y(), m.n), base_raw, alpha)
            entry["cuped"] = welch(adjusted, base_adj, alpha)
            entry["sequential"] = dict(
                zip(("lift_low", "lift_high"), always_valid(adjusted, base_adj, alpha), strict=True)
            )
        report["arms"][arm] = entry
    var_raw = total.var_y(ddof=0)
    var_adj = var_raw + theta * theta * total.var_x(ddof=0) - 2 * theta * total.cov(ddof=0)
    report["cuped_variance_reduction"] = 1 - var_adj / var_raw if var_raw > 0 else 0.0
    report["srm"] = {"p_value": srm_p, "mismatch": srm_p < srm_alpha, "counts": counts}
    report["verdict"] = verdict(report)
    return report


def verdict(report: dict[str, Any]) -> str:
    """One line a product team can act on."""
    if report["srm"]["mismatch"]:
        return "invalid: sample ratio mismatch (assignment or exposure logging broken): lifts not trustworthy"
    lines = []
    for arm, entry in report["arms"].items():
        seq = entry.get("sequential")
        if seq is None:
            continue
        if seq["lift_low"] > 0:
            lines.append(f"{arm} wins: +{entry['cuped']['lift']:.4g} over {report['control']}")
        elif seq["lift_high"] < 0:
            lines.append(f"{arm} loses: {entry['cuped']['lift']:.4g} against {report['control']}")
    return "; ".join(lines) or "no significant difference yet (keep running, or stop for lack of effect)"


def cumulative_moments(
    exposures: Iterable[ExposedUser], metrics: int, cuts: Sequence[float]
) -> list[list[dict[str, Moments]]]:
    """Per metric and cut time, per arm, the :class:`Moments` of the users exposed by then
    (outcome: converted by then; covariate: ``pre``): the experiment as it looked at each cut.

    >>> users = [ExposedUser("a", 0.0, 1.0, [5.0]), ExposedUser("b", 2.0, 0.0, [0.0])]
    >>> [{arm: m.n for arm, m in cut.items()} for cut in cumulative_moments(users, 1, [1.0, 9.0])[0]]
    [{'a': 1}, {'a': 1, 'b': 1}]
    """
    rows = list(exposures)
    out: list[list[dict[str, Moments]]] = [[{} for _ in cuts] for _ in range(metrics)]
    if not rows:
        return out
    arm = np.array([r.arm for r in rows])
    ts = np.array([r.ts for r in rows])
    pre = np.array([r.pre for r in rows])
    converted = np.array([r.converted[:metrics] for r in rows], dtype=float).reshape(len(rows), metrics)
    for arm_id in np.unique(arm):
        mine = arm == arm_id
        for c, cut in enumerate(cuts):
            chosen = mine & (ts <= cut)
            if not chosen.any():
                continue
            x = pre[chosen]
            for m in range(metrics):
                when = converted[chosen, m]
                y = ((when > 0) & (when <= cut)).astype(float)
                out[m][c][str(arm_id)] = Moments.of(y, x)
    return out
