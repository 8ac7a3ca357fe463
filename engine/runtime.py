"""Everything a shard derives from one catalog version, built by one function.

A shard serves one :class:`CatalogRuntime` at a time and reads the decider, the learner, the
answers, the live segment index and the partitions' setup through it. A new catalog version is
served by building its runtime off to the side (:meth:`CatalogRuntime.build` with the one
served as ``previous``: learned and live state carry over), reconfiguring the partitions with
its setup (:meth:`engine.partition.PartitionState.reconfigure`) and swapping the reference, all
in one synchronous step: a request is answered wholly before or wholly after, from exactly one
version. The first start builds its runtime the same way, with no previous one.

>>> from engine.catalog import DEFAULT_CATALOG, load_catalog
>>> catalog = load_catalog(DEFAULT_CATALOG)
>>> first = CatalogRuntime.build(catalog, version=1)
>>> second = CatalogRuntime.build(catalog, version=2, previous=first)
>>> second.version, second.decider.version, second.learner.catalog_version, sorted(second.changed_points)
(2, 2, 2, [])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from engine.answers import Answers
from engine.catalog import Catalog, Clusters, Membership
from engine.decision import Decider
from engine.learning import Learner, PartitionLearning
from engine.partition import PartitionSetup, PartitionState
from engine.pii import PiiSealer
from engine.schema import EventSchema
from engine.segments import SegmentIndex


@dataclass(frozen=True, slots=True)
class CatalogRuntime:
    """One catalog version as a shard serves it (build with :meth:`build`)."""

    catalog: Catalog
    #: The stored version (0: a catalog given directly, not stored).
    version: int
    decider: Decider
    #: The served policies (see :mod:`engine.learning`).
    learner: Learner
    answers: Answers
    #: The segments tracked live (None: the catalog's ``membership.track`` is off).
    segment_index: SegmentIndex | None
    #: What every partition is built (or reconfigured) with.
    setup: PartitionSetup
    #: Decision points whose policy did not carry over from the previous runtime: loaded from
    #: the partitions' contributions once they are reconfigured (:meth:`serve`).
    changed_points: frozenset[str] = field(default_factory=frozenset)

    @property
    def schema(self) -> EventSchema:
        return self.catalog.event_schema

    @property
    def membership(self) -> Membership:
        return self.catalog.membership

    @property
    def clusters(self) -> Clusters:
        return self.catalog.clusters

    @property
    def merge_interval_s(self) -> float:
        return self.catalog.learning.merge_interval_s

    @classmethod
    def build(
        cls,
        catalog: Catalog,
        version: int = 0,
        *,
        seed: int = 0,
        sealer: PiiSealer | None = None,
        previous: CatalogRuntime | None = None,
    ) -> CatalogRuntime:
        """The runtime of ``catalog`` (stored version ``version``); with ``previous`` (the one
        served until now), what it learned and tracks carries over (:meth:`carried_from`)."""
        fresh = cls.prepare(catalog, version, seed=seed, sealer=sealer)
        return fresh if previous is None else fresh.carried_from(previous)

    @classmethod
    def prepare(
        cls,
        catalog: Catalog,
        version: int = 0,
        *,
        seed: int = 0,
        sealer: PiiSealer | None = None,
        segments: SegmentIndex | None = None,
    ) -> CatalogRuntime:
        """The runtime of ``catalog`` alone, nothing carried over: the costly part of a switch
        (templates, rules and policies compiled), touching no state a shard serves, so a shard
        runs it in a thread while its event loop keeps answering. ``segments``: the index
        served now, taken instead of compiling the rules again when ``catalog`` defines the
        same one (its definition never changes, so reading it here is safe)."""
        decider = Decider(catalog, version)
        learner = Learner(catalog, decider, seed=seed, catalog_version=version)
        personalize_by_default = catalog.consent_mode == "opt_out"
        answers = Answers(decider, learner, personalize_by_default)
        index = None
        if catalog.membership.track:
            same = segments is not None and segments.definition == SegmentIndex.definition_of(catalog)
            index = segments if same else SegmentIndex(catalog)
        setup = PartitionSetup(
            learner=learner,
            segment_index=index,
            experiment_plan=decider.experiments,
            consent_by_default=personalize_by_default,
            sealer=sealer,
            schema=catalog.event_schema,
        )
        return cls(catalog, version, decider, learner, answers, index, setup, frozenset(learner.points))

    def carried_from(self, previous: CatalogRuntime) -> CatalogRuntime:
        """This runtime (fresh from :meth:`prepare`) with what ``previous`` (the one served until
        now) learned and tracks: the learner's state by feature and arm name
        (:meth:`engine.learning.Learner.carry_over`), the served cluster model while the
        catalog's ``clusters`` section is unchanged (another ``k`` waits for the model trained
        for it), the exposures logged and not yet applied. Reads state the shard serves: call
        it on the shard's event loop, in the switch's synchronous step."""
        changed = self.learner.carry_over(previous.learner)
        self.answers.exposures_pending = previous.answers.exposures_pending
        index, old_index = self.segment_index, previous.segment_index
        if index is not None and old_index is not None:
            same_clusters = previous.clusters == self.catalog.clusters
            if index.definition == old_index.definition and same_clusters:
                # The same segments: the index serves on (its compiled evaluators, its
                # model), and the partitions' membership state stays as it is.
                index = old_index
            elif index is old_index:
                # Taken by prepare() for its segments, but the clusters changed: the served
                # model is of another k and must not carry over.
                index = SegmentIndex(self.catalog)
            elif same_clusters:
                index.assigner = old_index.assigner
        setup = self.setup if index is self.segment_index else replace(self.setup, segment_index=index)
        return replace(self, segment_index=index, setup=setup, changed_points=frozenset(changed))

    def serve(
        self,
        partitions: Mapping[int, PartitionState],
        owned: Callable[[], Mapping[int, PartitionLearning]],
    ) -> None:
        """Reconfigure ``partitions`` (every one the shard holds) with this runtime's setup and
        load the statistics of the points that changed from ``owned()`` (the learning of the
        partitions the shard consumes, once reconfigured) and the other partitions' published
        contributions.
        Synchronous: call it and swap the served runtime with no await in between."""
        for part in partitions.values():
            part.reconfigure(self.setup)
        if self.changed_points:
            self.learner.rebuild(owned(), self.changed_points)
