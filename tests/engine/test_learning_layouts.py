"""The learning loop with the catalog's feature layout: decisions carry their layout, and state
or records of another layout (a catalog change) are read by feature name, never by position."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest

from engine.answers import Answers
from engine.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from engine.decision import Decider
from engine.events import encode_event
from engine.features import BUILTIN_LAYOUT, LAYOUT_VERSION
from engine.learning import POINT_STEP, Learner, PartitionLearning, decision_decoder, encode_record
from engine.partition import PartitionSetup, PartitionState
from tests.catalogs import CUSTOM_SCHEMA
from tests.engine.test_learning import NOW, POINT, PSEUDO, Log, decision_record, learner_for

KEY = PSEUDO.key("boards")
MOBILE = BUILTIN_LAYOUT.index("device=mobile")
LANG_DE = BUILTIN_LAYOUT.index("lang=de")


def custom_catalog(**learning: Any) -> Catalog:
    """The contract's catalog, with the default catalog's tutorials (decision points with
    variants) and ``learning`` settings on top."""
    data = load_catalog(CUSTOM_SCHEMA).model_dump(by_alias=True)
    data["tutorials"] = load_catalog(DEFAULT_CATALOG).model_dump()["tutorials"]
    data["journey"]["steps"][1]["id"] = "first_project"  # the first_project tutorial's step
    data["journey"]["steps"][3]["requires"] = ["first_project"]
    data["learning"].update(learning)
    return Catalog.model_validate(data)


def default_catalog(**learning: Any) -> Catalog:
    data = load_catalog(DEFAULT_CATALOG).model_dump()
    data["learning"].update(learning)
    return Catalog.model_validate(data)


def partition(learner: Learner, catalog: Catalog) -> PartitionState:
    return PartitionState(0, PartitionSetup(learner, schema=catalog.event_schema))


def test_a_decision_carries_its_layout_and_the_declared_features() -> None:
    catalog = custom_catalog()
    decider = Decider(catalog)
    learner = Learner(catalog, decider, seed=1)
    layout = learner.layout
    assert layout.dim == BUILTIN_LAYOUT.dim + 6
    assert all(p.dim == layout.dim for p in learner.served.values())
    part = partition(learner, catalog)
    for i, body in enumerate(
        [
            {"type": "session_started", "context": {"app_theme": "light"}},
            {"type": "profile_updated", "props": {"plan": "enterprise"}},
            {"type": "created_board", "props": {"template": "kanban"}},
            {"type": "step_completed", "props": {"step": "welcome"}},
        ],
        start=1,
    ):
        part.apply_message(i, KEY, encode_event({"event_id": f"e{i}", "user_id": KEY, "ts": NOW + i, **body}))
    decided = Answers(decider, learner).decide(part, KEY, {"app_theme": "dark"}, NOW + 10)
    record = decided.logs.decision
    assert record is not None and {c.point for c in record.choices} >= {POINT_STEP}
    assert record.layout == layout.layout_id and record.features_version == LAYOUT_VERSION == 3
    x = dict(zip(layout.names, record.context, strict=True))
    assert x["trait:plan=enterprise"] == 1.0 and x["trait:plan=free"] == 0.0
    assert x["event_count:created_board"] == pytest.approx(np.log1p(1))
    assert x["context:app_theme=dark"] == 1.0 and x["context:app_theme=light"] == 0.0  # the request's
    assert decision_decoder.decode(encode_record(record)).layout == layout.layout_id


def test_decisions_of_the_built_in_layout_are_learned_by_name_after_a_catalog_change() -> None:
    """Decisions logged before the catalog declared features replay into its policies."""
    catalog = custom_catalog()
    learner = Learner(catalog, Decider(catalog))
    contexts: list[np.ndarray] = []
    learner.on_close = lambda _id, _point, _arm, x, _reward, _p: contexts.append(x.copy())
    part, log = partition(learner, catalog), Log()
    for i in range(4):
        key = PSEUDO.key(f"u{i}")
        decision_id = log.decision(key, NOW + i, context_slot=MOBILE)  # a built-in layout record
        log.reward(key, decision_id, 1.0, NOW + i)
    log.replay(part)
    assert len(contexts) == 4
    for x in contexts:
        assert len(x) == learner.layout.dim
        assert (
            x[learner.layout.index("device=mobile")] == 1.0 and x[BUILTIN_LAYOUT.dim :].tolist() == [0.0] * 6
        )
    assert learner.served[POINT].stats["n"].sum() == 4


def test_a_decision_of_an_unknown_layout_is_not_learned() -> None:
    learner, log = learner_for(), Log()
    part = PartitionState(0, PartitionSetup(learner))
    key = PSEUDO.key("x")
    record = decision_record("x" * 26 + "0" * 16, key, NOW, "video", POINT, layout="0123456789ab")
    log.add(f"{key}-decision", encode_record(record))
    log.replay(part)
    assert part.learning is not None and part.learning.counts["decisions"] == 0
    # Once the layout is registered (its names are the built-in ones here), it is read.
    assert learner.context_of(record) is None
    learner.layouts["0123456789ab"] = BUILTIN_LAYOUT.names
    assert learner.context_of(record) is not None


def learned(learner: Learner, *, open_one: bool = True) -> PartitionState:
    """A partition of ``learner`` that learned from mobile decisions (one left open)."""
    part, log = PartitionState(0, PartitionSetup(learner)), Log()
    for i in range(6):
        key = PSEUDO.key(f"m{i}")
        decision_id = log.decision(key, NOW + i, context_slot=MOBILE)
        if i < 5 or not open_one:
            log.reward(key, decision_id, float(i % 2), NOW + i)
    log.replay(part)
    return part


def test_a_snapshot_of_another_layout_restores_by_feature_name() -> None:
    plain, catalog = default_catalog(reward_window_s=86_400), custom_catalog(reward_window_s=86_400)
    old = learned(learner_for(plain))
    snapshot = old.learning.snapshot()  # type: ignore[union-attr]
    assert "layout" not in snapshot  # the built-in layout: the bytes it always had
    new = PartitionLearning(Learner(catalog, Decider(catalog)))
    new.restore(snapshot)
    dim = BUILTIN_LAYOUT.dim
    before = old.learning.contributions["linear_igw"][POINT]  # type: ignore[union-attr]
    after = new.contributions["linear_igw"][POINT]
    np.testing.assert_array_equal(after["A"][:, :dim, :dim], before["A"])
    assert not after["A"][:, dim:, :].any() and not after["A"][:, :, dim:].any()
    np.testing.assert_array_equal(after["b"][:, :dim], before["b"])
    np.testing.assert_array_equal(after["n"], before["n"])
    (open_decision,) = [d for ds in new.open.values() for d in ds]
    x = np.frombuffer(open_decision.x, dtype=float)
    assert len(x) == dim + 6 and x[MOBILE] == 1.0
    # And back: the custom layout's snapshot names its features.
    again = new.snapshot()
    assert again["layout"] == list(new.learner.layout.names)
    back = PartitionLearning(learner_for(plain))
    back.restore(again)
    np.testing.assert_array_equal(back.contributions["linear_igw"][POINT]["A"], before["A"])


def test_a_layout_of_the_same_size_is_never_read_by_position() -> None:
    """Two catalogs whose vectors have the same length but list languages in another order:
    what one publishes, the other reads by feature name."""
    data = load_catalog(DEFAULT_CATALOG).model_dump()
    data["learning"]["builtin_features"]["languages"] = ["de", "en", "fr", "es"]
    swapped = Catalog.model_validate(data)
    theirs = Learner(swapped, Decider(swapped))
    assert theirs.layout.dim == BUILTIN_LAYOUT.dim and theirs.layout.layout_id != BUILTIN_LAYOUT.layout_id
    part, log = PartitionState(0, PartitionSetup(theirs)), Log()
    for i in range(5):
        key = PSEUDO.key(f"d{i}")
        x = [1.0] + [0.0] * (theirs.layout.dim - 1)
        x[theirs.layout.index("lang=de")] = 1.0
        record = decision_record(f"{key}{i:016x}", key, NOW + i, "video", POINT, x, theirs.layout.layout_id)
        log.add(f"{key}-decision", encode_record(record))
    log.replay(part)
    assert part.learning is not None and part.learning.counts["decisions"] == 5
    part.learning.advance(NOW + 10**6, part.last_seq)  # their reward windows close: learned
    seen = theirs.served[POINT]
    ours = learner_for()
    ours.set_view(0, part.learning.published(0))
    ours.rebuild({})
    video = ours.arm_index[POINT]["video"]
    gram = ours.served[POINT].stats["A"][video]
    assert gram[LANG_DE, LANG_DE] == 5.0 and gram[BUILTIN_LAYOUT.index("lang=en"), :].sum() == 0.0
    assert seen.stats["A"][video][theirs.layout.index("lang=de"), theirs.layout.index("lang=de")] == 5.0
    assert msgspec.msgpack.decode(part.learning.published(0))["layout"] == list(theirs.layout.names)


def test_the_activation_model_of_another_layout_is_served_by_name() -> None:
    plain = default_catalog(journey={"event": "onboarding_completed", "within_days": 1, "weight": 1.0})
    learner, log = learner_for(plain), Log()
    part = PartitionState(0, PartitionSetup(learner))
    rng = np.random.default_rng(3)
    for i in range(400):
        key = PSEUDO.key(f"a{i}")
        mobile = i % 2 == 0
        log.decision(key, NOW + i, context_slot=MOBILE if mobile else None)
        if rng.random() < (0.8 if mobile else 0.1):
            log.event(key, "onboarding_completed", NOW + i + 60)
    log.event(PSEUDO.key("late"), "session_started", NOW + 3 * 86_400)
    log.replay(part)
    custom = custom_catalog()
    other = Learner(custom, Decider(custom))
    other.set_view(0, part.learning.published(0))  # type: ignore[union-attr]
    other.rebuild({})
    mobile_x = np.zeros(other.layout.dim)
    mobile_x[0] = mobile_x[other.layout.index("device=mobile")] = 1.0
    desktop_x = np.zeros(other.layout.dim)
    desktop_x[0] = 1.0
    p_mobile, p_desktop = other.activation.predict(mobile_x), other.activation.predict(desktop_x)
    assert p_mobile is not None and p_desktop is not None and p_mobile > 0.6 and p_desktop < 0.3
