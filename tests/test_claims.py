"""One judging function for every claim: each status from known figures, one status per claim."""

from __future__ import annotations

import pytest

from perfkit import claims
from perfkit.claims import Check, Estimate, judge

REL = Check("C0", "speed-up", "s", "speedup", claimed=2.0, unit="x", tolerance=0.1)  # threshold 1.8


@pytest.mark.parametrize(
    ("estimate", "status"),
    [
        (Estimate(2.5), claims.HOLDS),
        (Estimate(1.7), claims.FAILS),
        (Estimate(2.0, 1.9, 2.1), claims.HOLDS),  # the whole interval clears 1.8
        (Estimate(1.6, 1.5, 1.7), claims.FAILS),  # the whole interval is below
        (Estimate(1.9, 1.6, 2.2), claims.INCONCLUSIVE),  # the interval straddles 1.8
        (None, claims.NOT_MEASURED),
    ],
)
def test_a_relative_check_holds_fails_or_is_inconclusive_by_its_interval(estimate, status):
    result = judge(REL, estimate)
    assert result.status == status
    if estimate is not None:
        assert result.measured == estimate.value and "1.8x" in result.why  # the rule and threshold are named


def test_at_most_applies_the_tolerance_upwards():
    check = Check("C0", "wait", "s", "wait_ms", claimed=5.0, unit="ms", rule="at_most", tolerance=0.1)
    assert judge(check, Estimate(5.4)).status == claims.HOLDS
    assert judge(check, Estimate(5.6)).status == claims.FAILS


def test_a_speedup_whose_variant_fails_the_quality_gate_is_not_a_plain_hold():
    gated = Check("C0", "speed-up", "s", "speedup", claimed=2.0, gate="passes_gate")
    assert judge(gated, Estimate(3.0), gate_passed=False).status == claims.GATE_FAILED
    assert judge(gated, Estimate(3.0), gate_passed=True).status == claims.HOLDS
    assert judge(gated, Estimate(1.0), gate_passed=False).status == claims.FAILS


def test_absolute_behaviour_simulated_and_unmeasurable_checks_are_never_plain_holds():
    absolute = Check("C0", "latency", "s", "latency_ms", claimed=2800, unit="ms", kind="absolute")
    assert judge(absolute, Estimate(14000)).status == claims.TEST_BED
    behaviour = Check("C0", "survives", "s", "survived", claimed=1, kind="behaviour")
    assert judge(behaviour, Estimate(1.0)).status == claims.SEEN
    assert judge(behaviour, Estimate(0.0)).status == claims.NOT_SEEN
    simulated = Check("C0", "util", "s", "util_pct", claimed=88, kind="simulated")
    result = judge(simulated, Estimate(90.0))
    assert result.status == claims.SIMULATED and "would hold" in result.why
    unmeasurable = Check("C0", "gpu", "s", kind="not_measurable", reason="a CPU has no GPU utilization")
    assert judge(unmeasurable, Estimate(1.0)).status == claims.NOT_MEASURABLE
    assert judge(unmeasurable, None).why == "a CPU has no GPU utilization"


def test_summary_values_and_their_intervals_are_read_by_key():
    summary = {"speedup": 2.0, "speedup_ci_low": 1.9, "speedup_ci_high": 2.1, "nan": float("nan"), "flag": True}
    assert Estimate.from_summary(summary, "speedup") == Estimate(2.0, 1.9, 2.1)
    assert Estimate.from_summary(summary, "nan") is None and Estimate.from_summary(summary, "absent") is None
    assert Estimate.from_summary(summary, "flag") == Estimate(1.0)


@pytest.mark.parametrize(
    ("statuses", "claim"),
    [
        ([claims.HOLDS, claims.HOLDS], claims.HOLDS),
        ([claims.HOLDS, claims.FAILS], claims.FAILS),
        ([claims.HOLDS, claims.INCONCLUSIVE], claims.INCONCLUSIVE),
        ([claims.HOLDS, claims.TEST_BED], claims.HOLDS),  # context does not stop a measured hold
        ([claims.NOT_MEASURED, claims.TEST_BED], claims.NOT_MEASURED),
        ([claims.GATE_FAILED, claims.HOLDS], claims.GATE_FAILED),
        ([], claims.NOT_MEASURED),
    ],
)
def test_a_claim_with_several_checks_gets_one_status(statuses, claim):
    assert claims.claim_status(statuses) == claim


def test_the_claims_file_refuses_unknown_fields_and_kinds(tmp_path):
    bad = tmp_path / "claims.yaml"
    bad.write_text("claims:\n  - {id: C1, area: a, text: t, checks: [{label: l, stage: s, metric: m, claimed: 1, unit: x, colour: red}]}\n")
    with pytest.raises(claims.ClaimsFileError, match="colour"):
        claims.load_claims(bad)
    bad.write_text("claims:\n  - {id: C1, area: a, text: t, checks: [{label: l, stage: s, metric: m, claimed: 1, kind: vibes}]}\n")
    with pytest.raises(claims.ClaimsFileError, match="allowed: relative"):
        claims.load_claims(bad)
