"""``headstart bench learn``: which tutorial variant to show, learned per user context.

The world: a simulated population (live profiles built by applying events to
:class:`engine.profile.UserState`, as the shards do) with hidden per-segment preferences over 8
tutorial variants: mobile users finish short formats, technical desktop users the advanced and
docs ones, and so on, through a logistic link with an interaction the policies' linear features
only approximate. Part-way through (60% of the decisions) preferences change: drift.

1. **Learning**: every policy makes the same number of decisions (same users, same order, same
   world) through the objects the engine uses: ours (``policies.linear_igw``), our LinUCB,
   epsilon-greedy, Thompson sampling, the static journey, River's ``LinUCBDisjoint``, VW's
   ``--cb_explore_adf --squarecb -q UA``, uniform random and the oracle (who knows the truth).
   ``regret`` is the expected regret against the oracle (the sum of the gaps in true completion
   probability); ``select_us`` includes building the context from the live profile.
2. **Off-policy evaluation**: each learned policy, frozen, is evaluated by IPS, self-normalized
   IPS and doubly robust estimators on a separate uniformly-logged run, with 95% intervals, next
   to its true value (its expected reward under the true preferences on fresh users).
3. **Activation lift**: fresh users go through three tutorial decisions each, onboarded either
   by the static journey (the first variant for everyone) or by our learned policy; a user
   activates with a probability that grows with the tutorials they complete. The lift is the
   ratio of activation rates, with a bootstrap interval (scipy).
4. **Pacing** (``metrics.pacing``, :mod:`bench.pacing`): the tolerance each user's dismissals
   and completions teach (``pacing.learned``) against the best of several fixed caps per day, on
   simulated users with a latent tolerance: activation and dismissals per activated user.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scistats

from bench import pacing as pacing_sim
from bench.common import write_result
from engine import ope
from engine.catalog import DEFAULT_CATALOG, load_catalog
from engine.events import event_from_object
from engine.features import FeatureLayout
from engine.profile import UserState, Vocabularies
from headstart.reports.evaluate import ShadowLog
from headstart.reports.shadow import point_report
from policies import create
from policies.base import Policy

ARMS = ["video", "interactive", "checklist", "advanced", "short_video", "guided_tour", "docs", "webinar"]
K = len(ARMS)
DEVICES = ["mobile", "desktop", "tablet"]
LOCALES = ["en-US", "de-DE", "fr-FR", "es-ES", "pt-BR"]
REFERRERS = ["google", "producthunt", "newsletter", "partner", "direct", "linkedin"]
ROLES = ["engineer", "designer", "manager", "founder", "analyst"]
SIZES = ["1-10", "11-50", "51-200", "201-1000", "1000+"]
NOW = 1_767_571_200.0 + 30 * 86400
SEED = 5
#: The context vector as the engine builds it for the default catalog (its built-in features).
LAYOUT = FeatureLayout.from_catalog(load_catalog(DEFAULT_CATALOG))
DIM = LAYOUT.dim


# ---------------------------------------------------------------------- the simulated world


class User:
    __slots__ = ("hidden", "request", "state", "vocab")

    def __init__(
        self, state: UserState, vocab: Vocabularies, request: dict[str, str], hidden: np.ndarray
    ) -> None:
        self.state, self.vocab, self.request, self.hidden = state, vocab, request, hidden


def context_vector(user: User) -> np.ndarray:
    """The user's context, as a shard builds it for a decision."""
    return LAYOUT.vector(user.state, user.vocab, user.request, NOW)


def population(n: int, rng: np.random.Generator) -> list[User]:
    """Users with live profiles built from events, and the hidden traits the world uses."""
    vocab = Vocabularies()
    users = []
    for i in range(n):
        device = DEVICES[int(rng.choice(3, p=[0.45, 0.45, 0.10]))]
        locale = LOCALES[int(rng.integers(len(LOCALES)))]
        referrer = REFERRERS[int(rng.integers(len(REFERRERS)))]
        role = ROLES[int(rng.integers(len(ROLES)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        sessions = int(rng.geometric(0.3))
        ts = NOW - float(rng.uniform(0, 10 * 86400))
        context = {"device_type": device, "locale": locale, "referrer": referrer}
        state = UserState.new(ts)
        user_id = f"u{i}"
        state.apply(
            event_from_object(
                {
                    "event_id": f"p{i}",
                    "user_id": user_id,
                    "type": "profile_updated",
                    "ts": ts,
                    "context": context,
                    "props": {"role": role, "company_size": size},
                }
            ),
            vocab,
        )
        for s in range(sessions):
            ts += float(rng.uniform(600, 86400))
            state.apply(
                event_from_object(
                    {
                        "event_id": f"s{i}-{s}",
                        "user_id": user_id,
                        "type": "session_started",
                        "ts": ts,
                        "context": context,
                    }
                ),
                vocab,
            )
            for c in range(int(rng.integers(0, 4))):
                state.apply(
                    event_from_object(
                        {
                            "event_id": f"f{i}-{s}-{c}",
                            "user_id": user_id,
                            "type": "feature_clicked",
                            "ts": ts + c,
                            "context": context,
                            "props": {"feature": "dashboard"},
                        }
                    ),
                    vocab,
                )
        technical = role in ("engineer", "analyst")
        hidden = np.array(
            [
                device == "mobile",
                device == "desktop",
                device == "tablet",
                technical,
                size in ("201-1000", "1000+"),
                sessions >= 4,
                referrer in ("producthunt", "linkedin"),
                device == "desktop" and technical,  # an interaction the linear features lack
            ],
            dtype=float,
        )
        users.append(User(state, vocab, {"device_type": device, "locale": locale}, hidden))
    return users


#: Logit of completing each variant: intercept, then one row per hidden trait.
_BEFORE = np.array(
    [
        # video interactive checklist advanced short guided docs webinar
        [-1.0, -1.2, -1.3, -1.8, -1.2, -1.4, -1.9, -2.2],  # intercept
        [0.0, -0.2, 0.7, -0.9, 1.3, 0.0, -0.8, -0.9],  # mobile
        [0.1, 0.3, -0.1, 0.2, -0.3, 0.6, 0.2, 0.3],  # desktop
        [0.5, 0.7, -0.2, -0.5, 0.3, 0.2, -0.6, -0.5],  # tablet
        [-0.3, 0.4, 0.0, 0.8, -0.2, -0.5, 0.9, 0.1],  # technical
        [0.0, 0.2, 0.1, 0.3, -0.3, 0.1, 0.2, 0.9],  # large company
        [0.1, 0.3, -0.2, 0.7, -0.1, -0.3, 0.4, 0.5],  # engaged (4+ sessions)
        [0.0, 0.6, 0.0, 0.2, 0.1, 0.0, 0.0, 0.0],  # community referrer
        [0.0, 0.0, 0.0, 0.6, 0.0, -0.4, 0.5, 0.0],  # desktop x technical
    ]
)
_AFTER = _BEFORE.copy()
_AFTER[1] = [0.0, 1.1, -0.3, -0.9, 0.2, 0.0, -0.8, -0.9]  # mobile users now prefer interactive
_AFTER[4] = [-0.3, 0.4, 0.0, 0.2, -0.2, 0.6, -0.2, 0.1]  # technical users lose interest in docs


def truth(user: User, drifted: bool) -> np.ndarray:
    """Each variant's true completion probability for ``user``."""
    weights = _AFTER if drifted else _BEFORE
    logits = weights[0] + user.hidden @ weights[1:]
    p: np.ndarray = 1.0 / (1.0 + np.exp(-logits))
    return p


# ---------------------------------------------------------------------- the contestants


class Contestant:
    """What a benchmark run needs of a policy: choose (with a propensity), learn, and the
    probabilities it would choose with once frozen (for off-policy evaluation)."""

    def __init__(
        self,
        select: Callable[[np.ndarray, User], tuple[int, float]],
        update: Callable[[np.ndarray, int, float, float], None],
        probabilities: Callable[[np.ndarray, User], np.ndarray],
    ) -> None:
        self.select, self.update, self.probabilities = select, update, probabilities


def ours(policy: Policy) -> Contestant:
    eligible = list(range(K))
    x_or_none: Callable[[np.ndarray], np.ndarray | None] = (
        (lambda x: x) if policy.contextual else (lambda x: None)
    )

    def select(x: np.ndarray, user: User) -> tuple[int, float]:
        return policy.select(x_or_none(x), eligible)

    def update(x: np.ndarray, arm: int, reward: float, propensity: float) -> None:
        policy.update(x_or_none(x), arm, reward)

    def probabilities(x: np.ndarray, user: User) -> np.ndarray:
        return policy.probabilities(x_or_none(x), eligible)

    return Contestant(select, update, probabilities)


def river_linucb(seed: int) -> Contestant:
    from river import bandit

    model = bandit.LinUCBDisjoint(alpha=1.0, beta=1.0, seed=seed)
    names = list(LAYOUT.names)

    def as_dict(x: np.ndarray) -> dict[str, float]:
        return dict(zip(names, x.tolist(), strict=True))

    def select(x: np.ndarray, user: User) -> tuple[int, float]:
        return int(model.pull(list(range(K)), context=as_dict(x))), 1.0

    def update(x: np.ndarray, arm: int, reward: float, propensity: float) -> None:
        model.update(arm, as_dict(x), reward)  # type: ignore[no-untyped-call]

    def probabilities(x: np.ndarray, user: User) -> np.ndarray:
        p = np.zeros(K)
        p[int(model._pull(list(range(K)), as_dict(x)))] = 1.0  # type: ignore[no-untyped-call]
        return p

    return Contestant(select, update, probabilities)


def vw(seed: int) -> Contestant:
    import vowpalwabbit

    model = vowpalwabbit.Workspace(f"--cb_explore_adf --squarecb -q UA --quiet --random_seed {seed}")
    rng = np.random.default_rng(seed)
    actions = [f"|A arm={a}" for a in ARMS]

    def shared(x: np.ndarray) -> str:
        return "shared |U " + " ".join(f"f{i}:{v:.6g}" for i, v in enumerate(x.tolist()) if v)

    def pmf(x: np.ndarray) -> np.ndarray:
        p = np.asarray(model.predict([shared(x), *actions]), dtype=float)
        normalized: np.ndarray = p / p.sum()
        return normalized

    def select(x: np.ndarray, user: User) -> tuple[int, float]:
        p = pmf(x)
        arm = int(rng.choice(K, p=p))
        return arm, float(p[arm])

    def update(x: np.ndarray, arm: int, reward: float, propensity: float) -> None:
        lines = [shared(x), *actions]
        lines[1 + arm] = f"0:{1.0 - reward}:{propensity} {actions[arm]}"  # VW minimizes cost
        model.learn(lines)

    def probabilities(x: np.ndarray, user: User) -> np.ndarray:
        return pmf(x)

    return Contestant(select, update, probabilities)


def uniform(seed: int) -> Contestant:
    rng = np.random.default_rng(seed)
    return Contestant(
        lambda x, user: (int(rng.integers(K)), 1.0 / K),
        lambda x, arm, reward, propensity: None,
        lambda x, user: np.full(K, 1.0 / K),
    )


def oracle(drifted: Callable[[], bool]) -> Contestant:
    def probabilities(x: np.ndarray, user: User) -> np.ndarray:
        p = np.zeros(K)
        p[int(truth(user, drifted()).argmax())] = 1.0
        return p

    return Contestant(
        lambda x, user: (int(truth(user, drifted()).argmax()), 1.0),
        lambda x, arm, reward, propensity: None,
        probabilities,
    )


# ---------------------------------------------------------------------- the run


def run(quick: bool = False, out_dir: Path | None = None) -> Path:
    started = dt.datetime.now(dt.UTC)
    n_decisions = 6_000 if quick else 60_000
    n_logged = 4_000 if quick else 20_000
    n_truth = 4_000 if quick else 20_000
    n_lift_users = 2_000 if quick else 10_000
    drift_at = int(n_decisions * 0.6)
    rng = np.random.default_rng(SEED)
    users = population(1_000 if quick else 5_000, rng)
    order = rng.integers(len(users), size=n_decisions)
    coins = rng.random(n_decisions)
    phase = {"drifted": False}
    contestants: dict[str, Contestant] = {
        "ours": ours(create("linear_igw", ARMS, dim=DIM, seed=SEED)),
        "linucb": ours(create("linucb", ARMS, dim=DIM, seed=SEED, alpha=0.5)),
        "epsilon_greedy": ours(create("epsilon_greedy", ARMS, seed=SEED, epsilon=0.05)),
        "thompson": ours(create("thompson", ARMS, seed=SEED)),
        "journey": ours(create("journey", ARMS, seed=SEED)),
        "river_linucb": river_linucb(SEED),
        "vw": vw(SEED),
        "random": uniform(SEED),
        "oracle": oracle(lambda: phase["drifted"]),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, contestant in contestants.items():
        phase["drifted"] = False
        results[name] = _learn(contestant, users, order, coins, drift_at, phase)
    phase["drifted"] = True
    best = results["oracle"]["mean_reward"]
    for r in results.values():
        r["regret"] = r.pop("regret_sum")
        r["reward_share_of_oracle"] = r["mean_reward"] / best

    ope_rng = np.random.default_rng(SEED + 1)
    logged = _uniform_log(users, n_logged, ope_rng)
    fresh = [users[i] for i in ope_rng.integers(len(users), size=n_truth)]
    ope: dict[str, dict[str, float]] = {}
    true_values: dict[str, float] = {}
    for name in ("ours", "linucb", "epsilon_greedy", "journey", "river_linucb", "vw", "random"):
        true_values[name] = _true_value(contestants[name], fresh)
        for estimator, (estimate, low, high) in _off_policy(contestants[name], logged).items():
            ope[f"{name}/{estimator}"] = {
                "estimate": estimate,
                "ci_low": low,
                "ci_high": high,
                "true_value": true_values[name],
                "covered": low <= true_values[name] <= high,
            }
    coverage = sum(v["covered"] for v in ope.values()) / len(ope)

    lift = _activation_lift(
        contestants["ours"], contestants["journey"], users, n_lift_users, np.random.default_rng(SEED + 2)
    )
    shadow = _apprentice(users, n_logged, np.random.default_rng(SEED + 3))
    repeats = [
        _apprentice(users, n_logged, np.random.default_rng(SEED + 100 + i))
        for i in range(2 if quick else SHADOW_REPEATS)
    ]
    shadow["coverage_over_runs"] = sum(r["covered"] for r in [shadow, *repeats]) / (1 + len(repeats))
    shadow["runs"] = 1 + len(repeats)
    pacing_users = 1_000 if quick else 5_000
    pacing = pacing_sim.compare(users=pacing_users, seed=SEED)
    metrics = {
        "policies": results,
        "shadow": shadow,
        "pacing": pacing,
        "ope": ope,
        "ope_coverage": coverage,
        "activation_lift": lift,
        "ours_select_plus_update_us": results["ours"]["select_us"] + results["ours"]["update_us"],
        "regret_ratio_ours_to_vw": results["ours"]["regret"] / results["vw"]["regret"],
        "regret_ratio_ours_to_river_linucb": results["ours"]["regret"] / results["river_linucb"]["regret"],
    }
    params = {
        "decisions": n_decisions,
        "drift_at_decision": drift_at,
        "arms": ARMS,
        "context_features": list(LAYOUT.names),
        "users": len(users),
        "ope_logged_decisions": n_logged,
        "ope_truth_users": n_truth,
        "ope_logging_policy": "uniform",
        "ope_interval": "95%, normal approximation (SNIPS: delta method)",
        "dr_reward_model": "ridge per arm, 2-fold cross-fitting",
        "lift_users_per_group": n_lift_users,
        "activation_model": "P(activate) = 0.05 + 0.25 x tutorials completed of 3",
        "vw_args": "--cb_explore_adf --squarecb -q UA --quiet",
        "pacing_users": pacing_users,
        "pacing_fixed_caps": list(pacing_sim.FIXED_CAPS),
        "pacing_world": (
            f"tolerance {pacing_sim.TOLERANCES} per 24 h with shares {pacing_sim.TOLERANCE_SHARES}; "
            f"within it completed {pacing_sim.P_IN} / dismissed {pacing_sim.D_IN}, beyond it "
            f"{pacing_sim.P_OUT} / {pacing_sim.D_OUT}, leaving after such a dismissal "
            f"{pacing_sim.QUIT_AFTER_ANNOYED}; staying each day {pacing_sim.STAY}; "
            f"{pacing_sim.TO_ACTIVATE} completions activate; {pacing_sim.DAYS} days"
        ),
        "seed": SEED,
        "quick": quick,
    }
    baseline = {name: results[name] for name in ("river_linucb", "vw", "random", "oracle")}
    return write_result("learn", params, metrics, baseline, out_dir=out_dir, started_at=started)


#: Points of each policy's learning curve.
CURVE_POINTS = 100


def _learn(
    contestant: Contestant,
    users: Sequence[User],
    order: np.ndarray,
    coins: np.ndarray,
    drift_at: int,
    phase: dict[str, bool],
) -> dict[str, Any]:
    select_ns = update_ns = 0
    reward_sum = regret_sum = 0.0
    perf = time.perf_counter_ns
    every = max(1, len(order) // CURVE_POINTS)
    curve_t: list[int] = []
    curve_regret: list[float] = []
    for t, (i, coin) in enumerate(zip(order.tolist(), coins.tolist(), strict=True)):
        if t % every == 0:
            curve_t.append(t)
            curve_regret.append(regret_sum)
        if t == drift_at:
            phase["drifted"] = True
        user = users[i]
        t0 = perf()
        x = context_vector(user)
        arm, propensity = contestant.select(x, user)
        t1 = perf()
        p = truth(user, phase["drifted"])
        reward = 1.0 if coin < p[arm] else 0.0
        t2 = perf()
        contestant.update(x, arm, reward, propensity)
        t3 = perf()
        select_ns += t1 - t0
        update_ns += t3 - t2
        reward_sum += reward
        regret_sum += float(p.max() - p[arm])
    n = len(order)
    return {
        "mean_reward": reward_sum / n,
        "regret_sum": regret_sum,
        "select_us": select_ns / n / 1000,
        "update_us": update_ns / n / 1000,
        # Cumulative regret as the decisions went (the learning curve; bench/plots.py).
        "curve": {"decisions": [*curve_t, n], "regret": [*curve_regret, regret_sum]},
    }


def _uniform_log(
    users: Sequence[User], n: int, rng: np.random.Generator
) -> list[tuple[User, np.ndarray, int, float]]:
    log = []
    for i in rng.integers(len(users), size=n).tolist():
        user = users[i]
        arm = int(rng.integers(K))
        reward = 1.0 if rng.random() < truth(user, True)[arm] else 0.0
        log.append((user, context_vector(user), arm, reward))
    return log


def _true_value(contestant: Contestant, users: Sequence[User]) -> float:
    """Expected reward of the frozen policy on fresh users under the true (drifted) world."""
    return float(np.mean([contestant.probabilities(context_vector(u), u) @ truth(u, True) for u in users]))


def _off_policy(
    contestant: Contestant, logged: Sequence[tuple[User, np.ndarray, int, float]]
) -> dict[str, tuple[float, float, float]]:
    """IPS, SNIPS and DR estimates of the frozen policy's value with 95% intervals."""
    target = np.array([contestant.probabilities(row[1], row[0]) for row in logged])
    result = ope.evaluate(
        target,
        np.array([row[1] for row in logged]),
        np.array([row[2] for row in logged]),
        np.array([row[3] for row in logged]),
        np.full(len(logged), 1.0 / K),  # logged uniformly
    )
    return {name: tuple(estimate) for name, estimate in result.items()}  # type: ignore[misc]


#: The apprentice run: a simple served policy that explores (epsilon-greedy, epsilon 0.3: every
#: arm keeps a propensity of at least 0.3/K, so the served log says something about each) and
#: ours scored beside it, the question shadow mode answers before a switch. (With ours served,
#: propensities fall to 0.001 once it has learned: weights of several hundred, too heavy-tailed
#: for a normal interval.)
SHADOW_SERVED, SHADOW = "epsilon_greedy", "linear_igw"
SHADOW_EPSILON = 0.3
#: More runs of the apprentice (other users and coins): how often its interval covers the truth.
SHADOW_REPEATS = 5


def _apprentice(users: Sequence[User], n: int, rng: np.random.Generator) -> dict[str, Any]:
    """Shadow mode as the engine runs it: ``SHADOW`` scores every decision the served policy
    makes and learns from its rewards; the apprentice report
    (:func:`headstart.reports.shadow.point_report`) estimates the shadow's value from the
    served log. ``shadow_true_value``: the shadow run for real on the same simulator, its own
    draw at every decision played against the same user and coin (``shadow_expected_value``:
    the same in expectation, from the simulator's truth); ``shadow_live_value``: a second copy
    of the shadow serving those users itself, learning from its own choices (another learner:
    not what the apprentice estimate targets)."""
    served = create(SHADOW_SERVED, ARMS, seed=SEED, epsilon=SHADOW_EPSILON)
    shadow = create(SHADOW, ARMS, dim=DIM, seed=SEED + 1)
    live = create(SHADOW, ARMS, dim=DIM, seed=SEED + 1)
    eligible = list(range(K))
    rows = []
    expected, played, live_rewards = [], [], []
    for i, coin in zip(rng.integers(len(users), size=n).tolist(), rng.random(n).tolist(), strict=True):
        user = users[i]
        x, p = context_vector(user), truth(user, False)
        choice = served.select(None, eligible)
        target = shadow.probabilities(x, eligible)
        reward = 1.0 if coin < p[choice.arm] else 0.0
        drawn = int(rng.choice(K, p=target / target.sum()))
        rows.append((x, choice.arm, reward, choice.propensity, target, drawn == choice.arm))
        expected.append(float(target @ p))
        played.append(1.0 if coin < p[drawn] else 0.0)
        served.update(None, choice.arm, reward)
        shadow.update(x, choice.arm, reward)
        own = live.select(x, eligible)
        live_reward = 1.0 if coin < p[own.arm] else 0.0
        live.update(x, own.arm, live_reward)
        live_rewards.append(live_reward)
    log = ShadowLog(
        arms=list(ARMS),
        x=np.array([r[0] for r in rows]),
        actions=np.array([r[1] for r in rows], dtype=int),
        rewards=np.array([r[2] for r in rows]),
        propensities=np.array([r[3] for r in rows]),
        target=np.array([r[4] for r in rows]),
        agreed=np.array([r[5] for r in rows], dtype=bool),
    )
    report = point_report(log)
    dr = report["shadow"]["dr"]
    true_value = float(np.mean(played))
    return {
        "served_policy": SHADOW_SERVED,
        "shadow_policy": SHADOW,
        "decisions": n,
        "agreement": report["agreement"],
        "served_value": report["served"]["value"],
        "shadow_value": dr["estimate"],
        "shadow_ci_low": dr["ci_low"],
        "shadow_ci_high": dr["ci_high"],
        "shadow_snips": report["shadow"]["snips"],
        "shadow_true_value": true_value,
        "shadow_expected_value": float(np.mean(expected)),
        "shadow_live_value": float(np.mean(live_rewards)),
        "covered": dr["ci_low"] <= true_value <= dr["ci_high"],
        "verdict": report["verdict"],
    }


def _activation_lift(
    learner: Contestant, static: Contestant, users: Sequence[User], n: int, rng: np.random.Generator
) -> dict[str, float]:
    """Activation of fresh users onboarded by the learned policy (still learning) against the
    static journey: three tutorial decisions per user, P(activate) = 0.05 + 0.25 x completions."""

    def onboard(contestant: Contestant, learn: bool) -> np.ndarray:
        activated = np.zeros(n)
        for j, i in enumerate(rng.integers(len(users), size=n).tolist()):
            user = users[i]
            x = context_vector(user)
            completions = 0
            for _ in range(3):
                arm, propensity = contestant.select(x, user)
                reward = 1.0 if rng.random() < truth(user, True)[arm] else 0.0
                completions += int(reward)
                if learn:
                    contestant.update(x, arm, reward, propensity)
            activated[j] = float(rng.random() < 0.05 + 0.25 * completions)
        return activated

    journey = onboard(static, learn=False)
    learned = onboard(learner, learn=True)
    ci = scistats.bootstrap(
        (journey, learned),
        lambda a, b, axis=-1: b.mean(axis=axis) / a.mean(axis=axis) - 1.0,
        n_resamples=2000,
        method="percentile",
        random_state=np.random.default_rng(SEED),
    ).confidence_interval
    return {
        "lift": float(learned.mean() / journey.mean() - 1.0),
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "activation_learned": float(learned.mean()),
        "activation_journey": float(journey.mean()),
    }


def summary(path: Path) -> str:
    import json

    m = json.loads(path.read_text())["metrics"]
    p = m["policies"]
    return (
        f"regret ours {p['ours']['regret']:.0f}, vw {p['vw']['regret']:.0f}, "
        f"river {p['river_linucb']['regret']:.0f}; "
        f"ours select+update {m['ours_select_plus_update_us']:.1f} us; OPE coverage {m['ope_coverage']:.0%}; "
        f"activation lift {m['activation_lift']['lift']:+.0%}; "
        f"shadow {m['shadow']['shadow_value']:.3f} [{m['shadow']['shadow_ci_low']:.3f}, "
        f"{m['shadow']['shadow_ci_high']:.3f}] vs true {m['shadow']['shadow_true_value']:.3f} "
        f"({m['shadow']['verdict']}; covered in {m['shadow']['coverage_over_runs']:.0%} of runs); "
        + _pacing_summary(m.get("pacing"))
    )


def _pacing_summary(pacing: dict[str, Any] | None) -> str:
    if not pacing:
        return "no pacing run"
    learned, best = pacing["learned"], pacing["best_fixed_cap"]
    return (
        f"pacing: learned activation {learned['activation']:.1%} with "
        f"{learned['dismissals_per_activated']:.2f} dismissals per activated user, best fixed cap "
        f"({best['cap']}/day) {best['activation']:.1%} with {best['dismissals_per_activated']:.2f}"
    )
