"""River models learned per event, per partition: who will activate, and which features to try.

Both live in a partition's learning state (:class:`engine.learning.PartitionLearning`), so they
learn each labelled outcome exactly once (stream order, replay-safe), checkpoint and move with
the partition.

- :class:`ActivationModel`: River's scaled logistic regression predicting whether a user
  activates (the catalog's journey event) within the journey's horizon, from the live features
  at a decision. Every shard serves :class:`MergedActivation`, the example-weighted average of
  all partitions' models taken in raw feature space (each model's scaler folded into its
  weights, so models with different scalers average consistently), refreshed at each merge.
- :class:`FeatureRecommender`: River's matrix factorization (``FunkMF``) over (user, feature)
  adoption: a user's first click of a feature is a 1, a feature they had not tried, picked by
  the stream sequence, a 0. It ranks the features a user has not tried by what similar users
  adopted. It stays per partition: user factors belong with the user, and item factors learned
  from a partition's thousands of users need no merge (factorizations are not averageable
  anyway: their latent axes differ).

  Training is not on the event path: a River update costs more than applying a whole event,
  and in a realistic mix (bench/ingest.py) over a quarter of events are first clicks, so
  learning them inline cut ingest sharply (figures: bench/RESULTS.md). Adoptions
  are queued in the partition (cheap, part of its snapshot) and learned in bounded batches by
  the shard between deliveries (:meth:`FeatureRecommender.train`). The model and the queue
  are snapshotted together, so each adoption is learned once across crashes and moves; under a
  sustained overload beyond :data:`MAX_QUEUED` the oldest queued adoptions are dropped (and
  counted) rather than slowing events down.

>>> import numpy as np
>>> from engine.features import BUILTIN_LAYOUT
>>> model, dim = ActivationModel(BUILTIN_LAYOUT.names), BUILTIN_LAYOUT.dim
>>> for i in range(200):
...     x = np.zeros(dim); x[0] = 1.0; x[1] = float(i % 2)
...     model.learn(x, bool(i % 2))
>>> merged = MergedActivation(dim)
>>> merged.load([model.raw_params()])
>>> mobile, desktop = np.eye(dim)[0] + np.eye(dim)[1], np.eye(dim)[0]
>>> merged.predict(mobile) > 0.5 > merged.predict(desktop)
True
"""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Iterable, Sequence

import numpy as np
from river import compose, linear_model, optim, preprocessing, reco

#: SGD step: River's default (0.01) needs tens of thousands of outcomes to move.
ACTIVATION_LR = 0.05
RECO_FACTORS = 8
#: Adoptions waiting to be learned, per partition, beyond which the oldest are dropped.
MAX_QUEUED = 20_000


def activation_pipeline() -> compose.Pipeline:
    """River's scaled logistic regression, as the activation model uses it."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optim.SGD(ACTIVATION_LR)
    )


def raw_coefficients(pipeline: compose.Pipeline) -> tuple[dict[str, float], float]:
    """A fitted :func:`activation_pipeline` as weights on the raw (unscaled) inputs and an
    intercept: the scaler folded into the regression."""
    scaler = pipeline["StandardScaler"]
    logistic = pipeline["LogisticRegression"]
    weights = logistic._weights
    intercept = float(logistic.intercept)
    raw: dict[str, float] = {}
    for name, mean in scaler.means.items():
        coefficient = float(weights.get(name, 0.0))
        sd = math.sqrt(scaler.vars.get(name, 0.0))
        if coefficient == 0.0 or sd == 0.0:
            continue  # a constant input carries no information (River scales it to 0)
        raw[name] = coefficient / sd
        intercept -= coefficient * mean / sd
    return raw, intercept


class ActivationModel:
    """One partition's River pipeline ``StandardScaler | LogisticRegression`` over the context
    vector's features (``names``: its layout's feature names, the bias first).

    River keys weights by feature name, so a model restored under another layout (the catalog's
    features changed) keeps what it learned about the features both share.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.pipeline = activation_pipeline()
        self.examples = 0
        #: The bias is the logistic regression's intercept; the other features are its inputs.
        self.inputs = tuple(names[1:])

    def learn(self, x: np.ndarray, activated: bool) -> None:
        self.pipeline.learn_one(dict(zip(self.inputs, x[1:].tolist(), strict=True)), activated)
        self.examples += 1

    def raw_params(self) -> tuple[np.ndarray, int]:
        """(weights over the context vector, examples learned), with the scaler folded in:
        ``p = sigmoid(w · x)``, where ``w[0]`` (the bias feature's) is the intercept."""
        scaler = self.pipeline["StandardScaler"]
        logistic = self.pipeline["LogisticRegression"]
        weights = logistic._weights
        w = np.zeros(len(self.inputs) + 1)
        intercept = float(logistic.intercept)
        for i, name in enumerate(self.inputs, start=1):
            coefficient = float(weights.get(name, 0.0))
            sd = math.sqrt(scaler.vars.get(name, 0.0))
            if coefficient == 0.0 or sd == 0.0:
                continue  # a constant input carries no information (River scales it to 0)
            w[i] = coefficient / sd
            intercept -= coefficient * scaler.means.get(name, 0.0) / sd
        w[0] = intercept
        return w, self.examples

    def snapshot(self) -> bytes:
        # River models pickle; the bytes are Headstart's own state, never loaded from users.
        return pickle.dumps((self.pipeline, self.examples))

    @classmethod
    def restore(cls, data: bytes, names: Sequence[str]) -> ActivationModel:
        model = cls(names)
        model.pipeline, model.examples = pickle.loads(data)
        return model


class MergedActivation:
    """What shards serve: the example-weighted average of partitions' models (raw space, in
    a context vector of ``dim`` features)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.w = np.zeros(dim)
        self.examples = 0

    def load(self, params: Iterable[tuple[np.ndarray, int]]) -> None:
        total, weighted = 0, np.zeros(self.dim)
        for w, n in params:
            if n > 0 and len(w) == self.dim:
                weighted += n * w
                total += n
        self.w = weighted / total if total else np.zeros(self.dim)
        self.examples = total

    def predict(self, x: np.ndarray) -> float | None:
        """P(activates within the horizon | live features), or None before any outcome."""
        if not self.examples:
            return None
        z = float(self.w @ x)
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


class FeatureRecommender:
    """One partition's River ``FunkMF`` over (user, feature) adoption, and its queue."""

    def __init__(self, seed: int = 0) -> None:
        # FunkMF over BiasedMF: with one pass over few adoptions per user, the biases soaked
        # up what the factors should learn (a held-out check in tests/engine/test_learning.py:
        # BiasedMF rarely ranked similar users' next feature first for newcomers, FunkMF with
        # these settings nearly always; figures in bench/RESULTS.md).
        self.model = reco.FunkMF(
            n_factors=RECO_FACTORS,
            optimizer=optim.SGD(0.1),
            l2=0.01,
            initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            seed=seed,
        )
        self.adoptions = 0
        self.dropped = 0
        #: (user key, adopted feature, a feature the user had not tried or "") in stream order.
        self.queue: deque[tuple[str, str, str]] = deque()
        self._items: tuple[np.ndarray, dict[str, int]] | None = None
        self._items_at = -1

    def add_adoption(self, user_key: str, feature: str, negative: str | None) -> None:
        """``user_key`` clicked ``feature`` for the first time (``negative``: one they had not
        tried); learned at the next :meth:`train`."""
        self.queue.append((user_key, feature, negative or ""))
        if len(self.queue) > MAX_QUEUED:
            self.queue.popleft()
            self.dropped += 1

    def train(self, budget: int) -> int:
        """Learn up to ``budget`` queued adoptions, oldest first; returns how many."""
        model = self.model
        done = 0
        while self.queue and done < budget:
            user_key, feature, negative = self.queue.popleft()
            model.learn_one(user_key, feature, 1.0)  # type: ignore[no-untyped-call]
            if negative:
                model.learn_one(user_key, negative, 0.0)  # type: ignore[no-untyped-call]
            done += 1
        self.adoptions += done
        return done

    def recommend(self, user_key: str, untried: Sequence[str], k: int = 3) -> list[str]:
        """Up to ``k`` untried features, the likeliest to be adopted first (none for a user the
        model has not learned from yet).

        This is on the decision path, so it scores all candidates with one matrix product over
        the item factors (cached until the next training batch) rather than River's
        ``predict_one`` per feature (a call per candidate); same scores. River's latent tables create
        an entry on a lookup of an unknown user, so the user is looked up without that.
        """
        user = self.model.u_latents.get(user_key) if user_key in self.model.u_latents else None
        if user is None or not untried:
            return []
        items = self._item_matrix()
        rows = [items[1].get(f) for f in untried]
        known = [(f, r) for f, r in zip(untried, rows, strict=True) if r is not None]
        if not known:
            return []
        scores = items[0][[r for _, r in known]] @ user
        order = np.argsort(-scores, kind="stable")[:k]
        return [known[i][0] for i in order]

    def _item_matrix(self) -> tuple[np.ndarray, dict[str, int]]:
        if self._items is None or self._items_at != self.adoptions:
            latents = self.model.i_latents
            names: list[str] = [str(n) for n in latents]
            matrix = np.array([latents[n] for n in names]) if names else np.zeros((0, RECO_FACTORS))
            self._items = (matrix, {n: i for i, n in enumerate(names)})
            self._items_at = self.adoptions
        return self._items

    def forget_user(self, user_key: str) -> None:
        """Drop the user's factors and queued adoptions (the item factors are aggregate)."""
        self.model.u_latents.pop(user_key, None)
        if any(entry[0] == user_key for entry in self.queue):
            self.queue = deque(entry for entry in self.queue if entry[0] != user_key)

    def snapshot(self) -> bytes:
        return pickle.dumps((self.model, self.adoptions))

    @classmethod
    def restore(cls, data: bytes) -> FeatureRecommender:
        model = cls()
        model.model, model.adoptions = pickle.loads(data)
        return model
