"""Deciding what a user sees next, from the catalog and the user's live state.

Rules decide what is eligible (prerequisites, segments); within that, the learning policy
chooses (a ``chooser``, :mod:`engine.learning`), or the journey's order without one. A user
never seen gets a cold-start answer from the request's context alone (for rule segments: zero
counts and the request's context).

>>> from engine.catalog import DEFAULT_CATALOG, load_catalog
>>> decider = Decider(load_catalog(DEFAULT_CATALOG))
>>> d = decider.decide("k" * 26, None, None, {"device_type": "mobile", "locale": "de-DE"}, now=0.0)
>>> a = d.answer
>>> a.step.id, a.tutorial, a.flags["simplified_mobile_flow"], a.message[:14], d.exposures
('welcome', None, True, 'Willkommen bei', [])
>>> sorted(a.segments)
['device_mobile', 'engagement_low', 'locale_de', 'mobile_newcomer', 'new_user']

The answer is what a client receives (JSON); the exposures are for the shard to log:

>>> b'"exposures"' in msgspec.json.encode(a)
False
"""

from __future__ import annotations

import hashlib
import html
import uuid
from typing import Any, NamedTuple

import msgspec
import pystache
from msgspec import UNSET, UnsetType

from engine.catalog import (
    DEVICE_TYPES,
    Catalog,
    CompletionRule,
    Step,
    Tutorial,
    Variant,
    cluster_segment,
    locale_segment,
    variables_used,
)
from engine.choices import POINT_STEP, Chooser, tutorial_point
from engine.event_refs import seen
from engine.events import EventKind
from engine.experiments import (
    FIXED_POLICY,
    SURFACE_MESSAGE,
    SURFACE_POLICY,
    SURFACE_STEPS,
    Arm,
    Experiment,
    ExperimentPlan,
)
from engine.pacing import NOTHING, SurfaceAllowed, surfaces
from engine.profile import TOUR_ACTIVE_S, TOUR_COMPLETED, TOUR_DISMISSED, TOUR_VIEWED, UserState, Vocabularies
from engine.rules import RuleReads, parse_rule, rule_input

#: Rendered messages kept per decider; cleared when full (simple and bounded, and a refill is cheap).
RENDER_CACHE_SIZE = 50_000


def _renderer() -> pystache.Renderer:
    # Values come from users (names, roles): HTML-escape them; a missing variable renders empty.
    return pystache.Renderer(missing_tags="ignore", escape=lambda text: html.escape(str(text), quote=True))


def rollout_bucket(flag_id: str, user_key: str) -> float:
    """A stable number in [0, 100) per (flag, user): the same user stays in or out of a rollout
    on every shard, after restarts and rescaling, and flags are independent of each other."""
    digest = hashlib.blake2b(f"{flag_id}:{user_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 / 100


class Exposure(NamedTuple):
    """An experiment a decision exposed its user to, and the user's arm in it."""

    experiment: str
    arm: str


class StepShown(msgspec.Struct):
    """The step a decision shows (``step`` of the answer)."""

    id: str
    kind: str
    title: str


class TourStepShown(msgspec.Struct):
    """A tour step as the in-app kit shows it, rendered in the user's locale."""

    target: str
    title: str
    body: str
    placement: str


class TutorialShown(msgspec.Struct):
    """The tutorial variant a decision shows with its step (``tutorial`` of the answer)."""

    id: str
    variant: str
    eligible: list[str]
    #: Where the in-app kit shows the variant's tour: ``tour`` or ``tooltip``.
    surface: str = "tour"
    tour: list[TourStepShown] = msgspec.field(default_factory=list)
    #: The step to continue from (the last one seen, after a reload or on another device).
    resume_at: int = 0


class JourneyItem(msgspec.Struct):
    """A step of the user's checklist (``journey`` of the answer)."""

    id: str
    title: str
    url: str | None
    done: bool


class DecisionAnswer(msgspec.Struct, kw_only=True):
    """The answer of ``/v1/decide``, as a client receives it (JSON, in this field order).

    The learning models' insights are added by :mod:`engine.answers` where a learning policy
    chooses for the user; left unset, they are not part of the answer.
    """

    decision_id: str
    step: StepShown | None
    tutorial: TutorialShown | None
    message: str
    step_message: str
    flags: dict[str, Any]
    segments: list[str]
    experiments: dict[str, str]
    completed_steps: list[str]
    personalized: bool
    explain: list[str]
    activation_probability: float | UnsetType | None = UNSET
    recommended_features: list[str] | UnsetType = UNSET
    #: The stored catalog version the answer was made from (0: a catalog given directly, not
    #: stored); a decision is made from exactly one version. Last: the keys before keep their
    #: places.
    catalog_version: int = 0
    #: The in-app kit's checklist: the journey steps for this user, in order, done or not.
    journey: list[JourneyItem] = msgspec.field(default_factory=list)
    #: What the in-app kit may show now (``tour``, ``tooltip``, ``banner``) given pacing, and
    #: why not otherwise (:mod:`engine.pacing`).
    surfaces: dict[str, SurfaceAllowed] = msgspec.field(default_factory=dict)


class Decision(msgspec.Struct):
    """A decision: the answer for the client, and the experiments it exposed the user to
    (logged by the shard, once per user and experiment; never part of the answer)."""

    answer: DecisionAnswer
    exposures: list[Exposure] = msgspec.field(default_factory=list)


class TutorialAnswer(msgspec.Struct, kw_only=True):
    """The answer of ``/v1/tutorials/select`` (JSON). Without an eligible variant it has no
    ``decision_id`` and no ``experiments``."""

    decision_id: str | UnsetType = UNSET
    tutorial: str
    variant: str | None
    eligible: list[str]
    segments: list[str]
    experiments: dict[str, str] | UnsetType = UNSET
    explain: list[str]
    #: The stored catalog version the answer was made from (0: not stored, see DecisionAnswer).
    catalog_version: int = 0


class TutorialChoice(msgspec.Struct):
    """A tutorial variant chosen: the answer, and the experiments it exposed the user to."""

    answer: TutorialAnswer
    exposures: list[Exposure] = msgspec.field(default_factory=list)


class Decider:
    """Turns (catalog, live state, request context) into a decision. Pure; no I/O."""

    def __init__(self, catalog: Catalog, version: int = 0) -> None:
        self.catalog = catalog
        #: The stored catalog version ``catalog`` is (0: given directly); every answer names it.
        self.version = version
        self.steps = catalog.journey.steps
        self._renderer = _renderer()
        self._templates: dict[tuple[int, str], Any] = {}
        self._rendered: dict[tuple[Any, ...], str] = {}
        self._tutorial_by_step: dict[str, Tutorial] = {t.step: t for t in catalog.tutorials if t.step}
        self._tutorial_by_feature: dict[str, Tutorial] = {
            t.feature: t for t in catalog.tutorials if t.feature
        }
        self._variants: dict[str, dict[str, Variant]] = {
            t.id: {v.id: v for v in t.variants} for t in catalog.tutorials
        }
        #: Step titles per locale (the checklist), and tours rendered per variables.
        self._titles: dict[str | None, dict[str, str]] = {}
        self._tours: dict[tuple[Any, ...], list[TourStepShown]] = {}
        self._completion: dict[str, list[CompletionRule]] = {
            s.id: s.completed_by or [CompletionRule(type="step_completed")] for s in self.steps
        }
        #: The catalog's rule segments, compiled (validated when the catalog loaded).
        self.rule_segments = [(s.id, parse_rule(s.rule, catalog.event_schema)) for s in catalog.segments]
        self._rule_reads = RuleReads.of([rule for _, rule in self.rule_segments])
        #: The catalog's experiments and holdout (catalog validation keeps two experiments
        #: that change the same part of a decision in one layer, so at most one arm applies).
        self.experiments = ExperimentPlan(catalog.experiments, catalog.holdout)
        schema = catalog.schema_
        used = variables_used(catalog)
        #: Declared traits and context fields the templates name: (name, is a context field).
        self._custom_variables = tuple(
            (name, name in schema.context) for name in (*schema.traits, *schema.context) if name in used
        )

    # ------------------------------------------------------------------ segments

    def segments(
        self,
        user: UserState | None,
        context: dict[str, Any],
        now: float,
        vocab: Vocabularies | None = None,
    ) -> list[str]:
        """The built-in and rule segments of a user, preferring the request's context where it
        has one (a user never seen: zero counts, the request's context)."""
        out = []
        tiers = self.catalog.engagement_tiers
        score = user.engagement_at(now) if user is not None else 0.0
        out.append(
            "engagement_high"
            if score >= tiers.high
            else "engagement_medium"
            if score >= tiers.medium
            else "engagement_low"
        )
        device = context.get("device_type") or (user.device_type if user else None)
        if device in DEVICE_TYPES:
            out.append(f"device_{device}")
        locale = locale_segment(context.get("locale") or (user.locale if user else None))
        if locale is not None:
            out.append(locale)
        out.append("returning_user" if user is not None and user.sessions > 1 else "new_user")
        if user is not None and user.cluster >= 0 and self.catalog.clusters.enabled:
            out.append(cluster_segment(user.cluster))
        if self.rule_segments:
            facts = rule_input(user, vocab, now, context, self._rule_reads, self.catalog.event_schema)
            out += [segment for segment, rule in self.rule_segments if rule.matches(facts)]
        return out

    # ------------------------------------------------------------------ journey

    def completed(self, step: Step, user: UserState | None, vocab: Vocabularies | None) -> bool:
        if user is None or vocab is None:
            return False
        for rule in self._completion[step.id]:
            if rule.type == "step_completed":
                ident = vocab.steps.find(step.id)
                if ident is not None and user.completed_steps >> ident & 1:
                    return True
            elif rule.type == "feature_clicked":
                if user.feature_count(vocab.features.find(rule.feature or "")) > 0:
                    return True
            elif rule.type == "tutorial_completed":
                if _tutorial_completions(user, vocab, rule.tutorial or "") > 0:
                    return True
            elif rule.type == "onboarding_completed":
                if user.count(EventKind.ONBOARDING_COMPLETED):
                    return True
            elif seen(user, vocab, rule.type, rule.props):  # a declared type
                return True
        return False

    def eligible_steps(
        self, user: UserState | None, vocab: Vocabularies | None, segments: list[str]
    ) -> tuple[list[Step], set[str], list[str]]:
        """Incomplete steps whose prerequisites are met and whose segments match, in journey
        order; also the completed step ids and why the others were left out."""
        done = {s.id for s in self.steps if self.completed(s, user, vocab)}
        member = set(segments)
        eligible, why_not = [], []
        for step in self.steps:
            if step.id in done:
                continue
            missing = [r for r in step.requires if r not in done]
            if missing:
                why_not.append(f"{step.id}: waits for {', '.join(missing)}")
            elif step.segments and not member.intersection(step.segments):
                why_not.append(f"{step.id}: only for {', '.join(step.segments)}")
            else:
                eligible.append(step)
        return eligible, done, why_not

    # ------------------------------------------------------------------ tutorials, messages, flags

    def tutorial_variants(self, tutorial: Tutorial, segments: list[str]) -> list[str]:
        """Variants of a tutorial this user may see (catalog order)."""
        member = set(segments)
        return [v.id for v in tutorial.variants if not v.segments or member.intersection(v.segments)]

    def tutorial_for(self, step: str | None = None, feature: str | None = None) -> Tutorial | None:
        if step is not None:
            return self._tutorial_by_step.get(step)
        if feature is not None:
            return self._tutorial_by_feature.get(feature)
        return None

    def render(self, templates: dict[str, str], locale: str | None, variables: dict[str, Any]) -> str:
        if not templates:
            return ""
        key = self._pick_locale(templates, locale)
        parsed_key = (id(templates), key)
        parsed = self._templates.get(parsed_key)
        if parsed is None:
            parsed = self._templates[parsed_key] = pystache.parse(templates[key])
        # Most users share their variables (no name yet, a handful of devices and roles), and a
        # cache hit costs a small fraction of a render.
        rendered_key = (parsed_key, *variables.items())
        rendered = self._rendered.get(rendered_key)
        if rendered is None:
            if len(self._rendered) >= RENDER_CACHE_SIZE:
                self._rendered.clear()
            rendered = self._rendered[rendered_key] = str(self._renderer.render(parsed, variables))
        return rendered

    def _pick_locale(self, templates: dict[str, str], locale: str | None) -> str:
        # de-DE, then de, then the catalog's default language.
        for candidate in (
            locale,
            locale[:2] if locale else None,
            self.catalog.default_locale,
            self.catalog.default_locale[:2],
        ):
            if candidate and candidate in templates:
                return candidate
        return next(iter(templates))

    def welcome_for(self, segments: list[str]) -> dict[str, str]:
        """The welcome templates for these segments: the first targeted message that matches."""
        member = set(segments)
        for targeted in self.catalog.messages.by_segment:
            if member.intersection(targeted.segments):
                return targeted.welcome
        return self.catalog.messages.welcome

    def flags(self, user_key: str, segments: list[str]) -> dict[str, dict[str, Any]]:
        """Every flag's value for a user, and why: ``TARGETING_MATCH`` (a segment rule),
        ``SPLIT`` (a percentage rollout), or ``DEFAULT`` (no rule applied), with the rule's
        index (OpenFeature's reasons, so a provider passes them on unchanged)."""
        member = set(segments)
        out = {}
        for flag in self.catalog.flags:
            entry: dict[str, Any] = {"value": flag.default, "reason": "DEFAULT", "rule": None}
            for i, rule in enumerate(flag.rules):
                if rule.segments and not member.intersection(rule.segments):
                    continue
                if rule.rollout is not None and rollout_bucket(flag.id, user_key) >= rule.rollout:
                    continue
                reason = "SPLIT" if rule.rollout is not None else "TARGETING_MATCH"
                entry = {"value": rule.value, "reason": reason, "rule": i}
                break
            out[flag.id] = entry
        return out

    # ------------------------------------------------------------------ the decision

    def decide(
        self,
        user_key: str,
        user: UserState | None,
        vocab: Vocabularies | None,
        context: dict[str, Any] | None,
        now: float,
        personalize: bool = True,
        chooser: Chooser | None = None,
        extra_segments: list[str] | None = None,
    ) -> Decision:
        """The next onboarding step, tutorial variant, message, flags and why.

        Rules decide what is eligible; ``chooser`` (the learning policy) chooses among the
        eligible steps and variants; without one, the journey's and catalog's order decides.
        """
        context = context or {}
        explain: list[str] = []
        if not personalize:
            explain.append("personalization not permitted for this user: default flow")
            user, vocab = None, None
        elif user is None:
            explain.append("user not seen yet: cold start from the request's context")
        segments = self.segments(user, context, now, vocab) + (extra_segments or [])
        arms = self._arms(user_key, segments, now, personalize, explain)
        by_surface = _arms_by_surface(arms)
        step_chooser, variant_chooser = _choosers(chooser, by_surface.get(SURFACE_POLICY))
        reached: set[str] = set()
        eligible, done, why_not = self.eligible_steps(user, vocab, segments)
        if eligible:
            reached.add(SURFACE_STEPS)
            if len(eligible) > 1:
                reached.add(SURFACE_POLICY)
        flow = by_surface.get(SURFACE_STEPS)
        if flow is not None:
            order = {step_id: i for i, step_id in enumerate(flow[1].steps or [])}
            eligible = sorted((s for s in eligible if s.id in order), key=lambda s: order[s.id])
            explain.append(f"experiment {flow[0].id}: arm {flow[1].id} offers the steps {list(order)}")
        step = eligible[0] if eligible else None
        if step is None:
            explain.append("journey complete" if len(done) == len(self.steps) else "no step eligible")
        elif step_chooser is not None and len(eligible) > 1:
            chosen, why = step_chooser.choose(POINT_STEP, [s.id for s in eligible])
            step = next(s for s in eligible if s.id == chosen)
            explain.append(f"step {step.id}: {why}")
        else:
            explain.append(f"step {step.id}: first eligible incomplete step in journey order")
        explain += why_not[:5]
        locale = context.get("locale") or (user.locale if user else None)
        variables = self._variables(user, vocab, context, step, locale)
        tutorial = self.tutorial_for(step=step.id) if step else None
        tutorial_out: TutorialShown | None = None
        continuing: str | None = None
        if tutorial is not None:
            variants = self._experiment_variants(tutorial, segments, by_surface, reached, explain)
            variants = self._not_seen_off(tutorial, variants, user, vocab, explain)
            if variants:
                in_progress = self._in_progress(tutorial, variants, user, vocab)
                if in_progress is not None:
                    variant, why = in_progress, "its tour is in progress"
                else:
                    variant, why = self._variant(tutorial, variants, variant_chooser)
                tutorial_out, active = self._shown(
                    tutorial, variant, variants, user, vocab, locale, variables, now
                )
                if active:
                    continuing = tutorial_out.surface
                explain.append(f"tutorial {tutorial.id}: variant {variant} ({why})")
        welcome = self.welcome_for(segments)
        reached.add(SURFACE_MESSAGE)
        message_arm = by_surface.get(SURFACE_MESSAGE)
        if message_arm is not None and message_arm[1].welcome is not None:
            welcome = message_arm[1].welcome
        message = self.render(welcome, locale, variables)
        step_message = self.render(step.message, locale, variables) if step else ""
        allowed = self._surfaces(tutorial_out, message, continuing, user, context, now)
        explain += [f"{name}: held back: {why.reason}" for name, why in allowed.items() if _held(why)]
        answer = DecisionAnswer(
            decision_id=(chooser.decision_id if chooser is not None else None) or uuid.uuid4().hex,
            step=None
            if step is None
            else StepShown(id=step.id, kind=step.kind, title=self.render(step.title, locale, variables)),
            tutorial=tutorial_out,
            message=message,
            step_message=step_message,
            flags={k: v["value"] for k, v in self.flags(user_key, segments).items()},
            segments=segments,
            experiments={exp.id: arm.id for exp, arm in arms},
            completed_steps=sorted(done),
            personalized=personalize and user is not None,
            explain=explain,
            catalog_version=self.version,
            journey=self._journey(segments, done, flow, locale),
            surfaces=allowed,
        )
        return Decision(answer, self._exposed(arms, reached))

    # ------------------------------------------------------------------ the in-app kit

    def _journey(
        self,
        segments: list[str],
        done: set[str],
        flow: tuple[Experiment, Arm] | None,
        locale: str | None,
    ) -> list[JourneyItem]:
        """The checklist: every step for the user's segments (or their experiment arm's
        steps), in order, with whether it is done."""
        member = set(segments)
        steps = [s for s in self.steps if s.id in done or not s.segments or member.intersection(s.segments)]
        if flow is not None and flow[1].steps is not None:
            order = {step_id: i for i, step_id in enumerate(flow[1].steps)}
            steps = sorted((s for s in steps if s.id in order), key=lambda s: order[s.id])
        titles = self._titles.get(locale)
        if titles is None:
            if len(self._titles) >= RENDER_CACHE_SIZE:
                self._titles.clear()
            titles = self._titles[locale] = {
                s.id: self.render(s.title, locale, {}) if s.title else s.id for s in self.steps
            }
        return [JourneyItem(id=s.id, title=titles[s.id], url=s.url, done=s.id in done) for s in steps]

    def _not_seen_off(
        self,
        tutorial: Tutorial,
        variants: list[str],
        user: UserState | None,
        vocab: Vocabularies | None,
        explain: list[str],
    ) -> list[str]:
        """The variants left once a tour the user dismissed or completed is not offered again
        (its variants with ``repeat`` stay)."""
        if user is None or vocab is None:
            return variants
        flags = user.tutorial_flags(vocab.tutorials.find(tutorial.id))
        if not flags & (TOUR_DISMISSED | TOUR_COMPLETED):
            return variants
        kept = [v for v in variants if self._variants[tutorial.id][v].repeat]
        if len(kept) < len(variants):
            what = "dismissed" if flags & TOUR_DISMISSED else "completed"
            explain.append(
                f"tutorial {tutorial.id}: {what} by the user, not offered again"
                + (f" (variants with repeat: {', '.join(kept)})" if kept else "")
            )
        return kept

    def _in_progress(
        self, tutorial: Tutorial, variants: list[str], user: UserState | None, vocab: Vocabularies | None
    ) -> str | None:
        """An eligible variant whose tour the user started and has not finished or closed."""
        if user is None or vocab is None:
            return None
        tutorial_id = vocab.tutorials.find(tutorial.id)
        for variant in variants:
            state = user.tour_state(tutorial_id, vocab.variants.find(variant))
            if state is not None and state[1] & TOUR_VIEWED and self._variants[tutorial.id][variant].tour:
                return variant
        return None

    def _shown(
        self,
        tutorial: Tutorial,
        variant_id: str,
        variants: list[str],
        user: UserState | None,
        vocab: Vocabularies | None,
        locale: str | None,
        variables: dict[str, Any],
        now: float,
    ) -> tuple[TutorialShown, bool]:
        """The tutorial as answered (the tour rendered, where to resume), and whether the user
        is in the middle of its tour right now."""
        variant = self._variants[tutorial.id][variant_id]
        tour = self._tour(tutorial.id, variant, locale, variables)
        resume_at, active = 0, False
        if user is not None and vocab is not None and tour:
            state = user.tour_state(vocab.tutorials.find(tutorial.id), vocab.variants.find(variant_id))
            if state is not None and state[1] & TOUR_VIEWED:
                resume_at = min(state[0], len(tour) - 1)
                active = now - state[2] < TOUR_ACTIVE_S
        shown = TutorialShown(
            id=tutorial.id,
            variant=variant_id,
            eligible=variants,
            surface=variant.surface,
            tour=tour,
            resume_at=resume_at,
        )
        return shown, active

    def _tour(
        self, tutorial_id: str, variant: Variant, locale: str | None, variables: dict[str, Any]
    ) -> list[TourStepShown]:
        """A variant's tour rendered for these variables (kept: most users share them, and the
        answer never changes it)."""
        if not variant.tour:
            return []
        key = (tutorial_id, variant.id, locale, *variables.items())
        tour = self._tours.get(key)
        if tour is None:
            if len(self._tours) >= RENDER_CACHE_SIZE:
                self._tours.clear()
            tour = self._tours[key] = [
                TourStepShown(
                    target=step.target,
                    title=self.render(step.title, locale, variables),
                    body=self.render(step.body, locale, variables),
                    placement=step.placement,
                )
                for step in variant.tour
            ]
        return list(tour)

    def _surfaces(
        self,
        tutorial: TutorialShown | None,
        message: str,
        continuing: str | None,
        user: UserState | None,
        context: dict[str, Any],
        now: float,
    ) -> dict[str, SurfaceAllowed]:
        content = {
            "tour": tutorial is not None and tutorial.surface == "tour" and bool(tutorial.tour),
            "tooltip": tutorial is not None and tutorial.surface == "tooltip" and bool(tutorial.tour),
            "banner": bool(message),
        }
        shows = user.shows() if user is not None else []
        tolerance = user.tolerance() if user is not None else ([], [])
        timezone = context.get("timezone")
        return surfaces(
            self.catalog.pacing,
            shows,
            tolerance,
            now,
            timezone if isinstance(timezone, str) else None,
            content,
            continuing,
        )

    # ------------------------------------------------------------------ experiments

    def _arms(
        self, user_key: str, segments: list[str], now: float, personalize: bool, explain: list[str]
    ) -> list[tuple[Experiment, Arm]]:
        """The user's arm in every running experiment that includes them (none without
        personalization consent, none in the global holdout)."""
        plan = self.experiments
        if not plan or not personalize:
            return []
        if plan.in_holdout(user_key):
            explain.append("in the global holdout: the default flow in every experiment")
            return []
        return plan.assign(user_key, segments, now)

    def _experiment_variants(
        self,
        tutorial: Tutorial,
        segments: list[str],
        by_surface: dict[str, tuple[Experiment, Arm]],
        reached: set[str],
        explain: list[str],
    ) -> list[str]:
        variants = self.tutorial_variants(tutorial, segments)
        if not variants:
            return variants
        surface = f"tutorial:{tutorial.id}"
        reached.add(surface)
        if len(variants) > 1:
            reached.add(SURFACE_POLICY)
        held = by_surface.get(surface)
        if held is not None and held[1].tutorials is not None:
            allowed = held[1].tutorials[tutorial.id]
            narrowed = [v for v in variants if v in allowed]
            if narrowed:
                explain.append(f"experiment {held[0].id}: arm {held[1].id} shows variants {narrowed}")
                return narrowed
        return variants

    def _exposed(self, arms: list[tuple[Experiment, Arm]], reached: set[str]) -> list[Exposure]:
        """The experiments this decision exposes the user to: those whose surfaces it reached,
        judged the same way in every arm (a control is exposed where a treatment would be)."""
        return [
            Exposure(exp.id, arm.id)
            for exp, arm in arms
            if not reached.isdisjoint(self.experiments.surfaces(exp.id))
        ]

    def select_tutorial(
        self,
        user: UserState | None,
        context: dict[str, Any] | None,
        now: float,
        step: str | None = None,
        feature: str | None = None,
        chooser: Chooser | None = None,
        vocab: Vocabularies | None = None,
        user_key: str = "",
        personalize: bool = False,
    ) -> TutorialChoice | None:
        """Which variant of the tutorial for ``step`` or ``feature`` this user should see."""
        tutorial = self.tutorial_for(step=step, feature=feature)
        if tutorial is None:
            return None
        segments = self.segments(user, context or {}, now, vocab)
        explain: list[str] = []
        arms = self._arms(user_key, segments, now, personalize, explain)
        by_surface = _arms_by_surface(arms)
        _, variant_chooser = _choosers(chooser, by_surface.get(SURFACE_POLICY))
        reached: set[str] = set()
        variants = self._experiment_variants(tutorial, segments, by_surface, reached, explain)
        if not variants:
            return TutorialChoice(
                TutorialAnswer(
                    tutorial=tutorial.id,
                    variant=None,
                    eligible=[],
                    segments=segments,
                    explain=["no variant eligible for this user's segments"],
                    catalog_version=self.version,
                )
            )
        variant, why = self._variant(tutorial, variants, variant_chooser)
        answer = TutorialAnswer(
            decision_id=(chooser.decision_id if chooser is not None else None) or uuid.uuid4().hex,
            tutorial=tutorial.id,
            variant=variant,
            eligible=variants,
            segments=segments,
            experiments={exp.id: arm.id for exp, arm in arms},
            explain=[*explain, f"variant {variant}: {why} (eligible: {', '.join(variants)})"],
            catalog_version=self.version,
        )
        return TutorialChoice(answer, self._exposed(arms, reached))

    @staticmethod
    def _variant(tutorial: Tutorial, variants: list[str], chooser: Chooser | None) -> tuple[str, str]:
        if chooser is None or len(variants) < 2:
            return variants[0], f"first eligible of {len(variants)}"
        return chooser.choose(tutorial_point(tutorial.id), variants)

    def _variables(
        self,
        user: UserState | None,
        vocab: Vocabularies | None,
        context: dict[str, Any],
        step: Step | None,
        locale: str | None,
    ) -> dict[str, Any]:
        variables: dict[str, Any] = {"product": self.catalog.product, "locale": locale}
        for field in ("device_type", "os", "country"):
            variables[field] = context.get(field) or (getattr(user, field) if user else None)
        if user is not None:
            variables.update(user_name=user.name, role=user.role, company_size=user.company_size)
        # Declared traits and context fields, from the profile (the request's context wins for
        # a context field). Without personalization there is no profile here (``decide``), so
        # a PII trait renders only with consent, as the name does.
        for name, is_context in self._custom_variables:
            value = context.get(name) if is_context else None
            if value is None and user is not None and vocab is not None:
                value = user.extra(vocab.custom_fields.find(name))
            # Numbers are kept as floats: 3.0 reads "3" in a message.
            variables[name] = int(value) if isinstance(value, float) and value.is_integer() else value
        if step is not None:
            variables["step_title"] = self.render(step.title, locale, {}) if step.title else step.id
        # A value not set is left out: pystache renders a missing tag empty, but None as "None".
        return {name: value for name, value in variables.items() if value is not None}


def _held(allowed: SurfaceAllowed) -> bool:
    """A surface with something to show that pacing holds back (said in ``explain``)."""
    return not allowed.show and allowed.reason != NOTHING


def _arms_by_surface(arms: list[tuple[Experiment, Arm]]) -> dict[str, tuple[Experiment, Arm]]:
    out: dict[str, tuple[Experiment, Arm]] = {}
    for exp, arm in arms:
        for surface in arm.surfaces():
            out.setdefault(surface, (exp, arm))
    return out


def _choosers(
    chooser: Chooser | None, policy_arm: tuple[Experiment, Arm] | None
) -> tuple[Chooser | None, Chooser | None]:
    """Who chooses steps and variants: the learning policy, unless the user's arm says
    ``fixed`` (catalog order) or names another policy the shards run."""
    if chooser is None or policy_arm is None or policy_arm[1].policy is None:
        return chooser, chooser
    if policy_arm[1].policy == FIXED_POLICY:
        return None, None
    chooser.serve(policy_arm[1].policy)
    return chooser, chooser


def _tutorial_completions(user: UserState, vocab: Vocabularies, tutorial: str) -> int:
    ident = vocab.tutorials.find(tutorial)
    t = user.tutorials
    if ident is None or t is None:
        return 0
    return sum(t[i + 3] for i in range(0, len(t), 4) if t[i] == ident)
