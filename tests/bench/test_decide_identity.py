"""``bench decide``'s identity-verification comparison, its pure parts: the signed bodies are
what the ingress accepts under ``required`` (and only for their own user), the ratio is the
median over neighbouring off/required pairs, and a run with a refused answer fails the
benchmark instead of being timed."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actors.ingress.schemas import DecideBody
from bench.decide import (
    IDENTITY_SECRET,
    BenchmarkInvalid,
    check_all_answered,
    decide_body,
    identity_metrics,
    identity_schedule,
)
from headstart.web.identity import IdentityRefused, IdentityVerifier


def test_signed_bodies_pass_required_verification_for_their_own_user_only() -> None:
    verifier = IdentityVerifier("required", IDENTITY_SECRET)
    signed = msgspec.json.decode(decide_body(7, IDENTITY_SECRET), type=DecideBody)
    verifier.verify(signed.user_id, signed.user_hash)  # accepted
    other = msgspec.json.decode(decide_body(8, IDENTITY_SECRET), type=DecideBody)
    with pytest.raises(IdentityRefused):
        verifier.verify(signed.user_id, other.user_hash)
    unsigned = msgspec.json.decode(decide_body(7), type=DecideBody)
    assert unsigned.user_hash is None and unsigned.user_id == signed.user_id
    with pytest.raises(IdentityRefused):
        verifier.verify(unsigned.user_id, unsigned.user_hash)


def _run(mode: str, rps: float, statuses: dict[str, int] | None = None, errors: int = 0) -> dict[str, Any]:
    return {
        "mode": mode,
        "rps": rps,
        "p50_ms": 20.0,
        "p99_ms": 50.0,
        "mean_ms": 22.0,
        "requests": int(rps * 6),
        "errors": errors,
        "statuses": statuses or {"200": int(rps * 6)},
        "percentiles": {"50": 20.0, "99": 50.0},
    }


def test_the_ratio_is_the_median_of_neighbouring_pairs() -> None:
    modes = identity_schedule(3)
    assert modes == ["off", "required", "required", "off", "off", "required"]
    # The machine slows down over the run: each pair still compares neighbours.
    rps = (2400, 2352, 2000, 2000, 1800, 1620)
    runs = [_run(m, r) for m, r in zip(modes, rps, strict=True)]
    metrics = identity_metrics(runs)
    assert metrics["identity_required_ratio_64_per_rep"] == pytest.approx([0.98, 1.0, 0.9])
    # The median of the pairs, not the ratio of the medians (2,000 / 2,000 here).
    assert metrics["identity_required_ratio_64"] == pytest.approx(0.98)
    assert metrics["identity_by_mode_64"]["off"]["rps"] == 2000
    assert metrics["identity_by_mode_64"]["required"]["rps"] == 2000
    assert metrics["identity_runs"] == runs
    assert identity_schedule(1) == ["off", "required"]  # --quick


def test_a_run_with_refused_answers_fails_the_benchmark() -> None:
    check_all_answered([_run("off", 2000), _run("required", 1980)])
    refused = _run("required", 3000, statuses={"200": 10, "403": 17990}, errors=17990)
    with pytest.raises(BenchmarkInvalid, match=r"required run 1: .*'403': 17990"):
        check_all_answered([_run("off", 2000), refused])
    dropped = _run("off", 2000, errors=1)  # a connection the client lost
    with pytest.raises(BenchmarkInvalid, match="off run 0"):
        check_all_answered([dropped, _run("required", 1980)])
