"""The onboarding catalog: journey, tutorials, messages and feature flags, from YAML.

Loading validates everything at once and reports every problem with the file, the path of
the field and why, so an operator fixes a catalog in one pass:

>>> from pathlib import Path
>>> catalog = load_catalog(DEFAULT_CATALOG)
>>> [step.id for step in catalog.journey.steps][:3]
['welcome', 'profile', 'connect_data']
>>> text = "version: 1\\nproduct: x\\njourney: {steps: [{id: a, kind: welcome, requires: [b]}]}"
>>> errors = check_catalog_text(text)
>>> print(errors[0])
<text>: journey.steps[0].requires[0]: unknown step 'b'
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pystache
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.errors import ConfigError
from engine.event_refs import PropMatches, reference_problems
from engine.experiments import (
    FIXED_POLICY,
    METRIC_EVENTS,
    SURFACE_MESSAGE,
    SURFACE_POLICY,
    Experiment,
    Holdout,
    check_layers,
)
from engine.rules import FIELDS, FUNCTIONS, RuleError, parse_rule
from engine.schema import BUILTIN_TRAITS, EventSchema, SchemaSection

DEFAULT_CATALOG = Path(__file__).resolve().parent / "catalogs" / "default.yaml"

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_\-]*$")]
Locale = Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")]
Template = Annotated[str, Field(max_length=4000)]
Url = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^(https?://|/)[^\s]*$")]
Clock = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
#: Steps a tour may have (its progress is kept per user as an index).
MAX_TOUR_STEPS = 50

#: Device types with a built-in segment each (``device_<type>``).
DEVICE_TYPES = ("mobile", "desktop", "tablet")
#: Segments Headstart computes itself from live state and the request's context. Rule and
#: learned segments (issue 6) extend this set.
BUILTIN_SEGMENTS = frozenset(
    {
        "engagement_high",
        "engagement_medium",
        "engagement_low",
        *(f"device_{d}" for d in DEVICE_TYPES),
        "new_user",
        "returning_user",
        # The activation model's probability is below ``learning.activation_low_below``.
        "activation_low",
    }
)
#: ``locale_<language>`` (e.g. ``locale_de``) is built in for every ISO 639-1 language.
LOCALE_SEGMENT = re.compile(r"^locale_[a-z]{2}$")
#: Behavioural clusters are segments ``cluster_0`` ... ``cluster_<k-1>`` (when enabled).
CLUSTER_SEGMENT = re.compile(r"^cluster_(\d+)$")
#: Clusters are also policy context (one-hot), so their number is bounded by the layout.
MAX_CLUSTERS = 4


def cluster_segment(cluster: int) -> str:
    return f"cluster_{cluster}"


def locale_segment(locale: str | None) -> str | None:
    """``locale_<language>`` for a locale such as ``de-DE`` (None: no usable locale)."""
    if isinstance(locale, str) and len(locale) >= 2 and locale[:2].isalpha():
        return f"locale_{locale[:2].lower()}"
    return None


#: Variables a message template may use, besides the traits and context fields the catalog's
#: ``schema:`` declares (by name); anything else renders empty.
TEMPLATE_VARIABLES = frozenset(
    {"user_name", "device_type", "os", "locale", "country", "role", "company_size", "step_title", "product"}
)
#: Built-in events that can complete a step (a declared type can too).
COMPLETION_EVENTS = ("step_completed", "feature_clicked", "tutorial_completed", "onboarding_completed")
#: Built-in events that can mean activation for the journey reward (a declared type can too).
JOURNEY_EVENTS = ("onboarding_completed", "tutorial_completed", "step_completed", "feature_clicked")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CompletionRule(_Model):
    """An event that completes a step: its own ``step_completed`` unless said otherwise; one
    of :data:`COMPLETION_EVENTS` or a declared type, whose listed ``props`` must all match
    (``count_by`` props: the step's completion is read from live state)."""

    type: Annotated[str, Field(min_length=1, max_length=64)]
    feature: Name | None = None
    tutorial: Name | None = None
    props: PropMatches = Field(default_factory=dict)


class Step(_Model):
    id: Name
    kind: Literal["welcome", "profile", "connect", "invite", "first_project", "tour", "custom"]
    title: dict[Locale, str] = Field(default_factory=dict)
    #: Where the checklist item leads (a path on the product or a full URL; None: nowhere).
    url: Url | None = None
    requires: list[Name] = Field(default_factory=list)
    completed_by: list[CompletionRule] = Field(default_factory=list)
    #: Shown only to users in at least one of these segments (empty: everyone).
    segments: list[str] = Field(default_factory=list)
    message: dict[Locale, Template] = Field(default_factory=dict)


class RuleSegment(_Model):
    """A segment defined by a rule over live state (see :mod:`engine.rules`)."""

    id: Name
    description: str = Field("", max_length=500)
    rule: str = Field(min_length=1, max_length=1000)


class Journey(_Model):
    steps: list[Step] = Field(min_length=1)


#: Where a tour step's box sits relative to its target (``auto``: where there is room).
Placement = Literal["top", "bottom", "left", "right", "auto"]
#: The surfaces a tutorial variant is shown on; with the banner, what pacing counts as
#: interruptions (the checklist is not one).
TUTORIAL_SURFACES = ("tour", "tooltip")
SURFACES = ("tour", "tooltip", "banner")


class TourStep(_Model):
    """One step of a guided tour: a box anchored to the element ``target`` (a CSS selector)
    selects on the product's page, with a localized Mustache ``title`` and ``body``."""

    target: str = Field(min_length=1, max_length=500)
    title: dict[Locale, Template] = Field(default_factory=dict)
    body: dict[Locale, Template] = Field(default_factory=dict)
    placement: Placement = "bottom"


class Variant(_Model):
    id: Name
    #: Eligible for users in at least one of these segments (empty: everyone).
    segments: list[str] = Field(default_factory=list)
    #: The guided tour the in-app kit shows for this variant (empty: the product shows it).
    tour: list[TourStep] = Field(default_factory=list, max_length=MAX_TOUR_STEPS)
    #: ``tour``: modal steps one after another; ``tooltip``: one step, non-modal, as a hotspot.
    surface: Literal["tour", "tooltip"] = "tour"
    #: Shown again after the user dismissed or completed it (false: once is enough).
    repeat: bool = False


class Tutorial(_Model):
    id: Name
    step: Name | None = None
    feature: Name | None = None
    variants: list[Variant] = Field(min_length=1)


class FlagRule(_Model):
    """First matching rule wins: segment membership and/or a stable percentage rollout."""

    segments: list[str] = Field(default_factory=list)
    rollout: float | None = Field(None, ge=0, le=100)
    value: bool = True


class Flag(_Model):
    id: Name
    description: str = ""
    default: bool = False
    rules: list[FlagRule] = Field(default_factory=list)


class EngagementTiers(_Model):
    """Engagement score thresholds of the built-in tiers (``engagement_high`` ≥ high...)."""

    high: float = Field(12.0, gt=0)
    medium: float = Field(4.0, gt=0)


class SegmentMessage(_Model):
    """A welcome message for users in at least one of ``segments``."""

    segments: list[str] = Field(min_length=1)
    welcome: dict[Locale, Template] = Field(min_length=1)


class Messages(_Model):
    welcome: dict[Locale, Template] = Field(default_factory=dict)
    #: Welcome messages per segment: the first whose segments the user is in wins, else ``welcome``.
    by_segment: list[SegmentMessage] = Field(default_factory=list)


class JourneyReward(_Model):
    """Credit back to every decision on a user's path when the user activates within ``within_days``
    (reward 1), or when that time passes without (reward 0); ``weight`` 0 turns it off."""

    #: One of :data:`JOURNEY_EVENTS` or a declared event type.
    event: Annotated[str, Field(min_length=1, max_length=64)] = "onboarding_completed"
    #: For ``feature_clicked`` / ``step_completed``: which feature or step means activation.
    name: Name | None = None
    #: For a declared type: the ``count_by`` props the event must have (each equal).
    props: PropMatches = Field(default_factory=dict)
    within_days: float = Field(14.0, gt=0, le=365)
    weight: float = Field(1.0, ge=0, le=1)


class BuiltinFeatures(_Model):
    """The categories of the built-in context features (``learning.builtin_features``); the
    defaults are the lists the vector was built with before they moved to the catalog, so a
    catalog that says nothing gets that vector (and the policy state learned with it)."""

    #: ``lang=<xx>``: one slot per language (a locale's first two letters).
    languages: list[Annotated[str, Field(pattern=r"^[a-z]{2}$")]] = Field(
        default_factory=lambda: ["en", "de", "fr", "es"], max_length=32
    )
    #: ``referrer=<group>``: referrers grouped by intent, one slot per group.
    referrer_groups: dict[Name, list[Annotated[str, Field(min_length=1, max_length=200)]]] = Field(
        default_factory=lambda: {
            "search": ["google", "bing"],
            "community": ["producthunt", "linkedin", "twitter"],
            "owned": ["newsletter", "partner"],
        },
        max_length=32,
    )
    #: ``role_technical``: the user's role is one of these.
    technical_roles: list[str] = Field(
        default_factory=lambda: ["engineer", "developer", "analyst", "data"], max_length=256
    )
    #: ``company_large``: the user's company size is one of these.
    large_company_sizes: list[str] = Field(default_factory=lambda: ["201-1000", "1000+"], max_length=64)

    @model_validator(mode="after")
    def _distinct(self) -> BuiltinFeatures:
        if len(set(self.languages)) != len(self.languages):
            raise ValueError("a language is listed twice")
        seen: dict[str, str] = {}
        for group, referrers in self.referrer_groups.items():
            for referrer in referrers:
                if referrer.lower() in seen:
                    raise ValueError(
                        f"referrer {referrer!r} is in groups {seen[referrer.lower()]!r} and {group!r}"
                    )
                seen[referrer.lower()] = group
        return self


#: The highest ``max_per_day`` a cap may say: a user's state keeps the interruptions of the
#: last two days, at most this many (:mod:`engine.profile`).
MAX_PER_DAY = 24

#: Slots the declared features may add to the context vector, in all. A linear policy's choice
#: and update cost O(d²) in the vector's length d (24 built-in slots: ~25 µs select+update in
#: bench learn); 64 more keeps a choice well under a millisecond.
MAX_DECLARED_SLOTS = 64


class FeatureSpec(_Model):
    """A declared field entering the policy's context vector (``learning.features``): a trait,
    a context field (categorical: one-hot over ``values``, by default the declared ones;
    numeric: ``log1p``-scaled) or a custom event type's per-user count (``log1p``)."""

    trait: str | None = None
    context: str | None = None
    event_count: str | None = None
    #: Categorical fields: the values that get a slot each (others: all zeros).
    values: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, min_length=1, max_length=64
    )

    @model_validator(mode="after")
    def _one_source(self) -> FeatureSpec:
        if sum(x is not None for x in (self.trait, self.context, self.event_count)) != 1:
            raise ValueError("a feature names exactly one of 'trait', 'context' or 'event_count'")
        return self

    @property
    def source(self) -> tuple[Literal["trait", "context", "event_count"], str]:
        """What the feature reads: ``("trait", "plan")``, ``("event_count", "created_board")``..."""
        if self.trait is not None:
            return "trait", self.trait
        if self.context is not None:
            return "context", self.context
        assert self.event_count is not None
        return "event_count", self.event_count


class Learning(_Model):
    """What the policies learn from and how (issue 5)."""

    #: The policy that chooses among eligible arms (``headstart evaluate`` lists them all).
    policy: str = "linear_igw"
    #: Constructor parameters of the policy, e.g. ``{gamma_scale: 10}``.
    params: dict[str, float | int | bool] = Field(default_factory=dict)
    #: A candidate scored on every decision and logged beside the served one, never served.
    shadow: str | None = None
    #: The shadow's constructor parameters (``params`` are the served policy's).
    shadow_params: dict[str, float | int | bool] = Field(default_factory=dict)
    #: Let the policy choose the next step among the eligible ones (false: journey order).
    steps: bool = True
    #: A decision's immediate reward: its step or tutorial completed within this many seconds...
    reward_window_s: float = Field(1800.0, gt=0, le=30 * 86400)
    #: ...else this.
    default_reward: float = Field(0.0, ge=0, le=1)
    journey: JourneyReward = JourneyReward()
    #: How often every shard publishes what its partitions learned and loads everyone else's.
    merge_interval_s: float = Field(5.0, gt=0, le=3600)
    #: Users whose predicted activation probability is below this are in the built-in segment
    #: ``activation_low`` (e.g. to give them a simpler flow through a flag or step rule).
    activation_low_below: float = Field(0.2, ge=0, le=1)
    #: The built-in context features' categories (languages, referrer groups, ...).
    builtin_features: BuiltinFeatures = BuiltinFeatures()
    #: Declared traits, context fields and event counts in the policy's context vector, after
    #: the built-in features (docs/learning.md, "Features").
    features: list[FeatureSpec] = Field(default_factory=list, max_length=64)


class Clusters(_Model):
    """Behavioural clusters (:mod:`engine.clusters`): River's ``StandardScaler | KMeans`` over
    each user's behavioural vector, trained on a sample, served to every shard."""

    enabled: bool = True
    k: int = Field(4, ge=2, le=MAX_CLUSTERS)
    #: How far a center moves toward each sample (River KMeans' ``halflife``): small is stable.
    halflife: float = Field(0.05, gt=0, le=1)
    seed: int = 7
    #: Users sampled for training: one in this many events.
    sample_every: int = Field(16, ge=1, le=1_000_000)
    #: Samples learned per second at most, off the event path: a bounded share of one shard's
    #: loop, assuming tens of µs per sample.
    train_per_s: int = Field(200, ge=1, le=100_000)
    #: Samples learned before a model is served (no clusters until then).
    min_samples: int = Field(200, ge=1)
    #: How often the trained model is published to every shard.
    publish_interval_s: float = Field(10.0, gt=0, le=86400)


class Membership(_Model):
    """Live segment membership (:mod:`engine.segments`)."""

    #: Keep every user's membership current and publish enter/exit changes (false: segments
    #: are only worked out when a decision asks, and there are no clusters).
    track: bool = True
    #: How often time-based segments ("inactive for 3 days", windows) are re-evaluated for every
    #: user, without waiting for an event.
    sweep_interval_s: float = Field(60.0, gt=0, le=86400)
    #: The sweeps' "now": the wall clock (live traffic), or each partition's newest event time
    #: (replaying or simulating a stream whose timestamps are not today's).
    clock: Literal["wall", "event"] = "wall"


class Webhook(_Model):
    """Where segment enter/exit changes are delivered (POST, JSON, signed with HMAC-SHA256)."""

    id: Name
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2000)]
    #: The environment variable holding the signing secret (never the secret in the catalog).
    secret_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")]
    #: Only these segments' changes (empty: all).
    segments: list[str] = Field(default_factory=list)
    changes: list[Literal["enter", "exit"]] = Field(default_factory=lambda: ["enter", "exit"])  # type: ignore[arg-type]
    #: Changes per POST at most.
    batch: int = Field(100, ge=1, le=10_000)
    #: Attempts per batch before it is given up (counted), with exponential backoff between.
    max_attempts: int = Field(8, ge=1, le=100)
    timeout_s: float = Field(5.0, gt=0, le=120)


#: The built-in event types a Segment ``track`` call may become (profile and consent changes
#: come from ``identify`` and the consent API).
SEGMENT_TRACK_TYPES = (
    "session_started",
    "onboarding_started",
    "onboarding_completed",
    "step_viewed",
    "step_completed",
    "feature_clicked",
    "tutorial_started",
    "tutorial_completed",
)


class SegmentTrack(_Model):
    """A Segment ``track`` call named ``event`` becomes a Headstart event of ``type`` (one of
    :data:`SEGMENT_TRACK_TYPES` or a type the catalog's ``schema`` declares), its ``props``
    taken from the call's properties (Headstart prop -> Segment property)."""

    event: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=64)
    props: dict[str, str] = Field(default_factory=dict)


def _default_tracks() -> list[SegmentTrack]:
    return [
        SegmentTrack(event="Feature Used", type="feature_clicked", props={"feature": "feature"}),
        SegmentTrack(event="Session Started", type="session_started"),
        SegmentTrack(event="Onboarding Started", type="onboarding_started"),
        SegmentTrack(event="Onboarding Completed", type="onboarding_completed"),
        SegmentTrack(event="Step Completed", type="step_completed", props={"step": "step"}),
        SegmentTrack(
            event="Tutorial Started",
            type="tutorial_started",
            props={"tutorial": "tutorial", "variant": "variant"},
        ),
        SegmentTrack(
            event="Tutorial Completed",
            type="tutorial_completed",
            props={"tutorial": "tutorial", "variant": "variant"},
        ),
    ]


class SegmentApi(_Model):
    """How calls to the Segment-compatible tracking API become Headstart events (docs/api.md,
    "Segment-compatible tracking"); calls nothing maps are counted and dropped."""

    track: list[SegmentTrack] = Field(default_factory=_default_tracks)
    #: ``identify`` traits kept (as a ``profile_updated`` event): built-in ones and those the
    #: catalog's ``schema`` declares; every other trait is dropped.
    identify_traits: list[str] = Field(default_factory=lambda: ["name", "age_band", "role", "company_size"])
    #: ``page`` and ``screen`` calls become ``step_viewed``, the step from this property (else
    #: the call's ``name``); false: dropped.
    pages_are_steps: bool = True
    step_property: str = "step"


class Cap(_Model):
    """How often interruptions may come: at most ``max_per_day`` per day in the user's time
    zone, at least ``min_gap_minutes`` apart (None: no limit)."""

    max_per_day: int | None = Field(None, ge=0, le=MAX_PER_DAY)
    min_gap_minutes: float | None = Field(None, ge=0, le=7 * 24 * 60)


class SurfaceCaps(_Model):
    tour: Cap = Cap()
    tooltip: Cap = Cap()
    banner: Cap = Cap()


class QuietHours(_Model):
    """No interruption from ``start`` to ``end`` (``HH:MM``, the user's local time; an end
    before the start spans midnight)."""

    start: Clock
    end: Clock

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end are equal: say which hours are quiet")
        return self


class Pacing(_Model):
    """How often the in-app kit may interrupt a user (tours, tooltips, the banner), enforced
    by ``/v1/decide``: caps overall and per surface, quiet hours, and the tolerance learned
    from each user's dismissals and completions (``learned``; docs/learning.md)."""

    overall: Cap = Cap()
    surfaces: SurfaceCaps = SurfaceCaps()
    quiet_hours: QuietHours | None = None
    learned: bool = True


class Catalog(_Model):
    version: Literal[1]
    product: str = Field(min_length=1, max_length=100)
    consent_mode: Literal["opt_in", "opt_out"] = "opt_out"
    default_locale: Locale = "en"
    engagement_tiers: EngagementTiers = EngagementTiers()
    journey: Journey
    tutorials: list[Tutorial] = Field(default_factory=list)
    messages: Messages = Messages()
    flags: list[Flag] = Field(default_factory=list)
    segments: list[RuleSegment] = Field(default_factory=list)
    clusters: Clusters = Clusters()
    membership: Membership = Membership()
    webhooks: list[Webhook] = Field(default_factory=list)
    learning: Learning = Learning()
    #: A/B and multivariate tests (:mod:`engine.experiments`), and the global holdout.
    experiments: list[Experiment] = Field(default_factory=list)
    holdout: Holdout | None = None
    segment_api: SegmentApi = SegmentApi()
    #: How often the in-app kit may interrupt (:mod:`engine.pacing`).
    pacing: Pacing = Pacing()
    #: The product's own event types, traits and context fields (:mod:`engine.schema`).
    schema_: SchemaSection = Field(SchemaSection(), alias="schema")
    _event_schema: EventSchema | None = PrivateAttr(None)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def event_schema(self) -> EventSchema:
        """The schema compiled: how this catalog's events decode (built once, on first use)."""
        if self._event_schema is None:
            self._event_schema = EventSchema(self.schema_)
        return self._event_schema

    def __getstate__(self) -> dict[Any, Any]:
        # The compiled schema's classes are made at run time and do not pickle: a catalog sent
        # to an actor compiles it again there, on first use.
        state = super().__getstate__()
        private = state.get("__pydantic_private__")
        if private and private.get("_event_schema") is not None:
            state = {**state, "__pydantic_private__": {**private, "_event_schema": None}}
        return state

    @property
    def cluster_segments(self) -> list[str]:
        return [cluster_segment(i) for i in range(self.clusters.k)] if self.clusters.enabled else []

    @field_validator("engagement_tiers")
    @classmethod
    def _tiers_ordered(cls, tiers: EngagementTiers) -> EngagementTiers:
        if tiers.medium >= tiers.high:
            raise ValueError("medium must be below high")
        return tiers


class CatalogError(ConfigError):
    """A catalog failed validation; ``errors`` lists every problem as 'file: path: why'."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_catalog(path: Path | str) -> Catalog:
    """Read and validate a catalog file; raise :class:`CatalogError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError([f"{path}: cannot read: {exc.strerror}"]) from None
    catalog, errors = _parse(text, str(path))
    if errors or catalog is None:
        raise CatalogError(errors)
    return catalog


def check_catalog_text(text: str, source: str = "<text>") -> list[str]:
    """Every problem of a catalog given as text (empty list: valid)."""
    return _parse(text, source)[1]


def _parse(text: str, source: str) -> tuple[Catalog | None, list[str]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        return None, [f"{source}: {where}: not valid YAML: {getattr(exc, 'problem', exc)}"]
    return parse_catalog_document(data, source)


def parse_catalog_document(data: Any, source: str = "<catalog>") -> tuple[Catalog | None, list[str]]:
    """A catalog from its structure (a YAML file's or a JSON body's) and every problem, each
    as 'source: place: why' (the messages of ``check-config``); valid: an empty list.

    >>> catalog, errors = parse_catalog_document({"version": 1, "product": "x"}, "body")
    >>> catalog is None, errors
    (True, ['body: journey: Field required'])
    """
    if not isinstance(data, dict):
        return None, [f"{source}: (top level): must be a mapping"]
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        return None, [f"{source}: {_loc(err['loc'])}: {err['msg']}" for err in exc.errors()]
    errors = [f"{source}: {where}: {why}" for where, why in _semantic_errors(catalog)]
    return (catalog, errors)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def is_known_segment(segment: str) -> bool:
    """Built in whatever the catalog says (clusters depend on it: see ``Catalog.cluster_segments``)."""
    return segment in BUILTIN_SEGMENTS or bool(LOCALE_SEGMENT.match(segment))


def _semantic_errors(catalog: Catalog) -> list[tuple[str, str]]:
    schema = catalog.schema_
    errors = _schema_errors(schema)
    errors += _rule_segment_errors(catalog.segments, catalog.event_schema)
    known = {s.id for s in catalog.segments} | set(catalog.cluster_segments)
    if catalog.clusters.enabled and not catalog.membership.track:
        errors.append(("clusters.enabled", "clusters need live membership (membership.track: true)"))
    webhook_ids: set[str] = set()
    for i, hook in enumerate(catalog.webhooks):
        if hook.id in webhook_ids:
            errors.append((f"webhooks[{i}].id", f"duplicate webhook id {hook.id!r}"))
        webhook_ids.add(hook.id)
        errors += _unknown_segments(hook.segments, f"webhooks[{i}].segments", known)

    steps = {s.id: s for s in catalog.journey.steps}
    seen: set[str] = set()
    for i, step in enumerate(catalog.journey.steps):
        where = f"journey.steps[{i}]"
        if step.id in seen:
            errors.append((f"{where}.id", f"duplicate step id {step.id!r}"))
        seen.add(step.id)
        for j, req in enumerate(step.requires):
            if req not in steps:
                errors.append((f"{where}.requires[{j}]", f"unknown step {req!r}"))
            elif req == step.id:
                errors.append((f"{where}.requires[{j}]", "a step cannot require itself"))
        errors += _unknown_segments(step.segments, f"{where}.segments", known)
        errors += _template_errors(step.message, f"{where}.message", catalog.default_locale, schema)
        for j, rule in enumerate(step.completed_by):
            at = f"{where}.completed_by[{j}]"
            if rule.type == "feature_clicked" and rule.feature is None:
                errors.append((at, "feature_clicked needs 'feature'"))
            if rule.type == "tutorial_completed" and rule.tutorial is None:
                errors.append((at, "tutorial_completed needs 'tutorial'"))
            if rule.type not in COMPLETION_EVENTS and (rule.feature or rule.tutorial):
                errors.append((at, "'feature' and 'tutorial' apply to built-in types; use 'props'"))
            problems = reference_problems(schema, rule.type, rule.props, COMPLETION_EVENTS, counted=True)
            errors += [(f"{at}.{sub}", why) for sub, why in problems]
    cycle = _find_cycle({s.id: [r for r in s.requires if r in steps] for s in catalog.journey.steps})
    if cycle:
        errors.append(("journey.steps", f"prerequisites form a cycle: {' -> '.join(cycle)}"))
    tutorial_ids: set[str] = set()
    for i, tutorial in enumerate(catalog.tutorials):
        where = f"tutorials[{i}]"
        if tutorial.id in tutorial_ids:
            errors.append((f"{where}.id", f"duplicate tutorial id {tutorial.id!r}"))
        tutorial_ids.add(tutorial.id)
        if (tutorial.step is None) == (tutorial.feature is None):
            errors.append((where, "a tutorial belongs to exactly one of 'step' or 'feature'"))
        if tutorial.step is not None and tutorial.step not in steps:
            errors.append((f"{where}.step", f"unknown step {tutorial.step!r}"))
        variant_ids = [v.id for v in tutorial.variants]
        if len(set(variant_ids)) != len(variant_ids):
            errors.append((f"{where}.variants", "duplicate variant ids"))
        for j, variant in enumerate(tutorial.variants):
            errors += _unknown_segments(variant.segments, f"{where}.variants[{j}].segments", known)
            errors += _tour_errors(variant, f"{where}.variants[{j}]", catalog.default_locale, schema)
    flag_ids: set[str] = set()
    for i, flag in enumerate(catalog.flags):
        if flag.id in flag_ids:
            errors.append((f"flags[{i}].id", f"duplicate flag id {flag.id!r}"))
        flag_ids.add(flag.id)
        for j, flag_rule in enumerate(flag.rules):
            if not flag_rule.segments and flag_rule.rollout is None:
                errors.append((f"flags[{i}].rules[{j}]", "a rule needs 'segments', 'rollout' or both"))
            errors += _unknown_segments(flag_rule.segments, f"flags[{i}].rules[{j}].segments", known)
    for i, step in enumerate(catalog.journey.steps):
        for j, completion in enumerate(step.completed_by):
            if completion.tutorial is not None and completion.tutorial not in tutorial_ids:
                where = f"journey.steps[{i}].completed_by[{j}].tutorial"
                errors.append((where, f"unknown tutorial {completion.tutorial!r}"))
    errors += _learning_errors(catalog.learning, schema)
    errors += _segment_api_errors(catalog.segment_api, catalog.event_schema)
    errors += _feature_errors(catalog.learning.features, catalog.event_schema)
    errors += _experiment_errors(catalog, known)
    errors += _template_errors(catalog.messages.welcome, "messages.welcome", catalog.default_locale, schema)
    for i, targeted in enumerate(catalog.messages.by_segment):
        where = f"messages.by_segment[{i}]"
        errors += _unknown_segments(targeted.segments, f"{where}.segments", known)
        errors += _template_errors(targeted.welcome, f"{where}.welcome", catalog.default_locale, schema)
    if not catalog.messages.welcome:
        errors.append(("messages.welcome", "a welcome message is required"))
    return errors


def _tour_errors(
    variant: Variant, where: str, default_locale: str, schema: SchemaSection
) -> list[tuple[str, str]]:
    """A tooltip with other than one step, a step with no text or a broken target or template."""
    errors: list[tuple[str, str]] = []
    if variant.surface == "tooltip" and len(variant.tour) != 1:
        errors.append(
            (f"{where}.tour", f"a tooltip variant has exactly one tour step (it has {len(variant.tour)})")
        )
    for k, step in enumerate(variant.tour):
        at = f"{where}.tour[{k}]"
        problem = selector_problem(step.target)
        if problem:
            errors.append((f"{at}.target", problem))
        if not step.title and not step.body:
            errors.append((at, "a tour step needs a title or a body"))
        errors += _template_errors(step.title, f"{at}.title", default_locale, schema)
        errors += _template_errors(step.body, f"{at}.body", default_locale, schema)
    return errors


def selector_problem(selector: str) -> str | None:
    """Why ``selector`` cannot be a CSS selector the kit can use, or None. Only what is surely
    wrong (the browser is the judge of the rest): blank, a line break, unbalanced brackets or
    quotes.

    >>> selector_problem("#invite-button"), selector_problem('[data-x="a"')
    (None, "unbalanced '[' or quotes")
    """
    if not selector.strip():
        return "empty selector"
    if any(c in selector for c in "\n\r\t{}"):
        return "a CSS selector has no line breaks, tabs or braces"
    depth = {"[": 0, "(": 0}
    quote = ""
    for char in selector:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[(":
            depth[char] += 1
        elif char in "])":
            opening = "[" if char == "]" else "("
            depth[opening] -= 1
            if depth[opening] < 0:
                return f"unbalanced {opening!r} or quotes"
    for opening, count in depth.items():
        if count:
            return f"unbalanced {opening!r} or quotes"
    return "unbalanced quotes" if quote else None


def _schema_errors(schema: SchemaSection) -> list[tuple[str, str]]:
    """The schema's clashes with built-in names, and a declared trait or context field named
    like a rule field or function or a template variable (one bare name, two meanings)."""
    errors = schema.clashes()
    reported = {where for where, _ in errors}
    for section, names in (("traits", schema.traits), ("context", schema.context)):
        for name in names:
            where = f"schema.{section}.{name}"
            if where in reported:
                continue
            if name in FIELDS:
                errors.append((where, f"{name!r} is a rule field"))
            elif name in FUNCTIONS:
                errors.append((where, f"{name!r} is a rule function"))
            elif name in TEMPLATE_VARIABLES:
                errors.append((where, f"{name!r} is a message template variable"))
    return errors


def _props_of(schema: EventSchema, event_type: str) -> tuple[str, ...]:
    """The props an event type (built-in or declared) carries."""
    for field in msgspec.structs.fields(schema.classes[event_type]):
        if field.name == "props":
            return tuple(f.name for f in msgspec.structs.fields(field.type))
    return ()


def _segment_api_errors(api: SegmentApi, schema: EventSchema) -> list[tuple[str, str]]:
    """Segment mappings to types, props and traits that exist (built-in or declared)."""
    errors: list[tuple[str, str]] = []
    allowed = (*SEGMENT_TRACK_TYPES, *schema.custom_types)
    for i, track in enumerate(api.track):
        where = f"segment_api.track[{i}]"
        if track.type not in allowed:
            errors.append(
                (f"{where}.type", f"unknown event type {track.type!r} (allowed: {', '.join(allowed)})")
            )
            continue
        props = _props_of(schema, track.type)
        for name in track.props:
            if name not in props:
                known = ", ".join(props) or "none"
                errors.append(
                    (f"{where}.props.{name}", f"{track.type} has no prop {name!r} (its props: {known})")
                )
        for name in props:
            spec = schema.prop(track.type, name)
            if spec is not None and spec.required and name not in track.props:
                errors.append((f"{where}.props", f"{track.type}'s required prop {name!r} is not mapped"))
    traits = (*BUILTIN_TRAITS, *schema.traits)
    for i, trait in enumerate(api.identify_traits):
        if trait not in traits:
            errors.append(
                (f"segment_api.identify_traits[{i}]", f"unknown trait {trait!r} (known: {', '.join(traits)})")
            )
    return errors


def _learning_errors(learning: Learning, schema: SchemaSection) -> list[tuple[str, str]]:
    from policies import available  # policies are pure logic too; imported late to keep this light

    known = available()
    errors = []
    for field in ("policy", "shadow"):
        name = getattr(learning, field)
        if name is not None and name not in known:
            errors.append(
                (f"learning.{field}", f"unknown policy {name!r} (known: {', '.join(sorted(known))})")
            )
    for name, field, given in (
        (learning.policy, "params", learning.params),
        (learning.shadow, "shadow_params", learning.shadow_params),
    ):
        if name in known:
            try:
                params: dict[str, Any] = dict(given)
                known[name](["a", "b"], dim=2, **params)
            except (TypeError, ValueError) as exc:
                errors.append((f"learning.{field}", f"not accepted by {name}: {exc}"))
    journey = learning.journey
    if journey.event in ("feature_clicked", "step_completed") and journey.name is None:
        errors.append(("learning.journey.name", f"{journey.event} needs the feature or step 'name'"))
    if journey.event not in JOURNEY_EVENTS and journey.name is not None:
        errors.append(("learning.journey.name", "'name' applies to built-in types; use 'props'"))
    problems = reference_problems(
        schema, journey.event, journey.props, JOURNEY_EVENTS, counted=True, type_field="event"
    )
    errors += [(f"learning.journey.{sub}", why) for sub, why in problems]
    return errors


def _feature_errors(features: list[FeatureSpec], schema: EventSchema) -> list[tuple[str, str]]:
    """What is wrong with ``learning.features``: undeclared names, a string field without
    values, values on a number or boolean, duplicates, PII, too many slots."""
    errors: list[tuple[str, str]] = []
    first: dict[tuple[str, str], int] = {}
    slots = 0
    for i, spec in enumerate(features):
        where = f"learning.features[{i}]"
        source, name = spec.source
        if (source, name) in first:
            errors.append(
                (where, f"{source} {name!r} is listed twice (also learning.features[{first[source, name]}])")
            )
            continue
        first[source, name] = i
        if source == "event_count":
            if name not in schema.custom_types:
                declared = ", ".join(schema.custom_types) or "none"
                errors.append((f"{where}.event_count", f"unknown event type {name!r} (declared: {declared})"))
            elif spec.values is not None:
                errors.append((f"{where}.values", "'values' applies to string traits and context fields"))
            slots += 1
            continue
        section = "traits" if source == "trait" else "context"
        declared_fields = schema.section.traits if source == "trait" else schema.section.context
        field = declared_fields.get(name)
        if field is None:
            known = ", ".join(declared_fields) or "none"
            noun = "trait" if source == "trait" else "context field"
            errors.append((f"{where}.{source}", f"unknown {noun} {name!r} (declared: {known})"))
            continue
        if name in schema.pii_traits:
            errors.append(
                (f"{where}.{source}", f"{name!r} is PII: it may not enter the logged context vector")
            )
        if field.type != "string":
            if spec.values is not None:
                errors.append((f"{where}.values", f"'values' applies to strings; {name!r} is a {field.type}"))
            slots += 1
            continue
        values = spec.values if spec.values is not None else field.values
        if values is None:
            errors.append(
                (
                    f"{where}.{source}",
                    f"string field {name!r} needs 'values' (here or in schema.{section}.{name})",
                )
            )
            continue
        if len(set(values)) != len(values):
            errors.append((f"{where}.values", "a value is listed twice"))
        for j, value in enumerate(spec.values or []):
            if field.values is not None and value not in field.values:
                errors.append(
                    (
                        f"{where}.values[{j}]",
                        f"{value!r} is not a declared value of {name!r} "
                        f"(declared: {', '.join(field.values)})",
                    )
                )
        slots += len(values)
    if slots > MAX_DECLARED_SLOTS:
        errors.append(
            (
                "learning.features",
                f"{slots} slots in the context vector (one per value of a categorical feature); "
                f"at most {MAX_DECLARED_SLOTS}",
            )
        )
    return errors


def _experiment_errors(catalog: Catalog, known_segments: set[str]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    steps = {s.id for s in catalog.journey.steps}
    variants = {t.id: {v.id for v in t.variants} for t in catalog.tutorials}
    policies = {
        FIXED_POLICY,
        catalog.learning.policy,
        *([catalog.learning.shadow] if catalog.learning.shadow else []),
    }
    seen: set[str] = set()
    for i, exp in enumerate(catalog.experiments):
        where = f"experiments[{i}]"
        if exp.id in seen:
            errors.append((f"{where}.id", f"duplicate experiment id {exp.id!r}"))
        seen.add(exp.id)
        errors += _unknown_segments(exp.segments, f"{where}.segments", known_segments)
        if not exp.surfaces():
            errors.append((f"{where}.arms", "no arm changes anything (steps, tutorials, welcome or policy)"))
        for metric_where, metric in [("metric", exp.metric)] + [
            (f"guardrails[{j}]", g) for j, g in enumerate(exp.guardrails)
        ]:
            at = f"{where}.{metric_where}"
            problems = reference_problems(
                catalog.schema_, metric.event, metric.props, METRIC_EVENTS, type_field="event"
            )
            errors += [(f"{at}.{sub}", why) for sub, why in problems]
            if metric.event not in METRIC_EVENTS:
                if metric.name is not None:
                    errors.append((f"{at}.name", "'name' applies to built-in types; use 'props'"))
                continue
            if metric.name is not None and metric.event.startswith("step_") and metric.name not in steps:
                errors.append((f"{where}.{metric_where}.name", f"unknown step {metric.name!r}"))
            if (
                metric.name is not None
                and metric.event.startswith("tutorial_")
                and metric.name not in variants
            ):
                errors.append((f"{where}.{metric_where}.name", f"unknown tutorial {metric.name!r}"))
        for j, arm in enumerate(exp.arms):
            at = f"{where}.arms[{j}]"
            for k, step in enumerate(arm.steps or []):
                if step not in steps:
                    errors.append((f"{at}.steps[{k}]", f"unknown step {step!r}"))
            if arm.steps is not None and len(set(arm.steps)) != len(arm.steps):
                errors.append((f"{at}.steps", "a step is listed twice"))
            for tutorial, chosen in (arm.tutorials or {}).items():
                if tutorial not in variants:
                    errors.append((f"{at}.tutorials.{tutorial}", f"unknown tutorial {tutorial!r}"))
                    continue
                if not chosen:
                    errors.append((f"{at}.tutorials.{tutorial}", "needs at least one variant"))
                for variant in chosen:
                    if variant not in variants[tutorial]:
                        errors.append((f"{at}.tutorials.{tutorial}", f"unknown variant {variant!r}"))
            if arm.welcome is not None:
                errors += _template_errors(
                    arm.welcome, f"{at}.welcome", catalog.default_locale, catalog.schema_
                )
            if arm.policy is not None and arm.policy not in policies:
                errors.append(
                    (
                        f"{at}.policy",
                        f"{arm.policy!r} is not run by the shards: use {FIXED_POLICY!r}, the served "
                        f"policy or the shadow policy (learning.policy / learning.shadow)",
                    )
                )
    errors += [("experiments", problem) for problem in check_layers(catalog.experiments)]
    # Two experiments that change the same part of a decision must split users (one layer),
    # or one would overwrite the other's arm and both analyses would be wrong.
    for a, b in itertools.combinations(catalog.experiments, 2):
        if a.layer is not None and a.layer == b.layer:
            continue
        sa, sb = a.surfaces(), b.surfaces()
        choices_a = SURFACE_POLICY in sa and bool(sb - {SURFACE_MESSAGE})
        choices_b = SURFACE_POLICY in sb and bool(sa - {SURFACE_MESSAGE})
        if sa & sb or choices_a or choices_b:
            errors.append(
                (
                    "experiments",
                    f"{a.id} and {b.id} change the same part of a decision: put them in one layer",
                )
            )
    return errors


def _unknown_segments(segments: list[str], where: str, defined: set[str]) -> list[tuple[str, str]]:
    return [
        (
            f"{where}[{k}]",
            f"unknown segment {seg!r} (built in: {', '.join(sorted(BUILTIN_SEGMENTS))}, locale_xx; "
            f"defined: {', '.join(sorted(defined)) or 'none'})",
        )
        for k, seg in enumerate(segments)
        if not is_known_segment(seg) and seg not in defined
    ]


def _rule_segment_errors(segments: list[RuleSegment], schema: EventSchema) -> list[tuple[str, str]]:
    """Duplicate or built-in ids, and rules that do not parse over the built-in fields and what
    ``schema`` declares."""
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, segment in enumerate(segments):
        if segment.id in seen:
            errors.append((f"segments[{i}].id", f"duplicate segment id {segment.id!r}"))
        if is_known_segment(segment.id) or CLUSTER_SEGMENT.match(segment.id):
            errors.append((f"segments[{i}].id", f"{segment.id!r} is a built-in segment"))
        seen.add(segment.id)
        try:
            parse_rule(segment.rule, schema)
        except RuleError as exc:
            errors.append((f"segments[{i}].rule", str(exc)))
    return errors


_TAG = re.compile(r"\{\{\s*([#^/]?)\s*([^}\s]*)\s*\}\}")


def _template_errors(
    templates: dict[str, str], where: str, default_locale: str, schema: SchemaSection
) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    if (
        templates
        and default_locale not in templates
        and default_locale.split("-", maxsplit=1)[0] not in templates
    ):
        errors.append((where, f"no text for the default locale {default_locale!r} to fall back on"))
    for locale, text in templates.items():
        problem = template_problem(text, schema)
        if problem:
            errors.append((f"{where}.{locale}", problem))
    return errors


def template_variables(schema: SchemaSection | None = None) -> frozenset[str]:
    """What a message template may use: :data:`TEMPLATE_VARIABLES` and the declared traits
    and context fields."""
    if schema is None:
        return TEMPLATE_VARIABLES
    return TEMPLATE_VARIABLES | set(schema.traits) | set(schema.context)


def variables_used(catalog: Catalog) -> frozenset[str]:
    """Every variable the catalog's templates name (messages, step titles and messages, arms'
    welcome messages): what a decision needs to look up to render them."""
    templates = [catalog.messages.welcome, *(m.welcome for m in catalog.messages.by_segment)]
    templates += [t for s in catalog.journey.steps for t in (s.title, s.message)]
    templates += [a.welcome for e in catalog.experiments for a in e.arms if a.welcome is not None]
    templates += [
        text
        for t in catalog.tutorials
        for v in t.variants
        for step in v.tour
        for text in (step.title, step.body)
    ]
    return frozenset(name for t in templates for text in t.values() for _, name in _TAG.findall(text))


def template_problem(text: str, schema: SchemaSection | None = None) -> str | None:
    """Why a Mustache template is broken, or None. pystache accepts some broken templates
    (an unclosed section, a dangling ``{{``) silently, so these are checked here. Declared
    traits and context fields of ``schema`` are variables too."""
    known = template_variables(schema)
    if text.count("{{") != text.count("}}"):
        return "unbalanced '{{' and '}}'"
    open_sections: list[str] = []
    for kind, name in _TAG.findall(text):
        if kind in "#^" and kind:
            open_sections.append(name)
        elif kind == "/" and (not open_sections or open_sections.pop() != name):
            return f"section end {{{{/{name}}}}} does not match an open section"
        if name and name not in known and not name.startswith("!"):
            return f"unknown variable {name!r} (known: {', '.join(sorted(known))})"
    if open_sections:
        return f"section {{{{#{open_sections[-1]}}}}} is never closed"
    try:
        pystache.parse(text)
    except Exception as exc:  # noqa: BLE001 - pystache's own parse errors, reported as text
        return f"template does not parse: {exc}"
    return None


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None
