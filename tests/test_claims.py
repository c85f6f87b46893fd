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


TESTED = Check(
    "C0",
    "speed-up at 4 ranks",
    "s",
    "speedup_4",
    claimed=2.0,
    unit="x",
    tolerance=0.1,
    requires="ranks_measured",
    untested="{claim_ranks} ranks not measured here (ranks {ranks})",
)


def test_a_check_whose_requires_is_false_is_not_tested_with_its_why_and_figure():
    summary = {
        "speedup_4": 3.0,
        "speedup_4_ci_low": 2.5,
        "speedup_4_ci_high": 3.5,
        "ranks_measured": False,
        "claim_ranks": 4,
        "ranks": "1, 2",
    }
    (result,) = claims.judge_summary([TESTED], summary)
    assert result.status == claims.NOT_TESTED  # 3.0 would clear 1.8: a figure that does not test the claim is not a hold
    assert "4 ranks not measured here (ranks 1, 2)" in result.why
    assert (result.measured, result.low, result.high) == (3.0, 2.5, 3.5)
    (tested,) = claims.judge_summary([TESTED], {**summary, "ranks_measured": True})
    assert tested.status == claims.HOLDS


def test_a_check_whose_requires_key_is_missing_is_not_measured():
    (result,) = claims.judge_summary([TESTED], {"speedup_4": 3.0})
    assert result.status == claims.NOT_MEASURED and "ranks_measured" in result.why


def test_a_not_tested_check_without_its_figure_still_says_why():
    (result,) = claims.judge_summary([TESTED], {"ranks_measured": False, "claim_ranks": 4, "ranks": "1"})
    assert result.status == claims.NOT_TESTED and result.measured is None
    assert result.why == "4 ranks not measured here (ranks 1)"


@pytest.mark.parametrize(
    ("statuses", "claim"),
    [
        ([claims.HOLDS, claims.NOT_TESTED], claims.NOT_TESTED),
        ([claims.NOT_TESTED, claims.FAILS], claims.FAILS),
        ([claims.HOLDS, claims.NOT_TESTED, claims.FAILS], claims.FAILS),
        ([claims.HOLDS, claims.CONTEXT], claims.HOLDS),  # a context figure is shown, never judged
        ([claims.FAILS, claims.CONTEXT], claims.FAILS),
        ([claims.NOT_TESTED, claims.CONTEXT], claims.NOT_TESTED),
    ],
)
def test_claim_status_ranks_fails_over_not_tested_over_holds_and_ignores_context(statuses, claim):
    assert claims.claim_status(statuses) == claim


def test_a_context_check_is_shown_never_judged():
    context = Check("C0", "weight bytes", "s", "size_saving_pct", unit="%", kind="context", reason="the checkpoint's bytes")
    (result,) = claims.judge_summary([context], {"size_saving_pct": 1.0})
    assert result.status == claims.CONTEXT and result.measured == 1.0


CLAIM = "  - {id: C1, area: a, text: t, checks: [{label: l, stage: s, metric: m, claimed: 1, unit: x}]}\n"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            "claims:\n  - {id: C1, area: a, text: t, checks: [{label: l, stage: s, metric: m, claimed: 1, requires: ok}]}\n",
            "requires needs an untested text",
        ),
        (
            "claims:\n  - {id: C1, area: a, text: t, source: blog, checks: [{label: l, stage: s, metric: m, claimed: 1}]}\n",
            "unknown claim field.*source",
        ),
        (
            "claims:\n"
            + CLAIM
            + "  - {id: C2, area: a, text: t, derived_from: C9, checks: [{label: l, stage: s, metric: m, claimed: 1}]}\n",
            "C2: derived_from 'C9'",
        ),
        (
            "claims:\n  - {id: C1, area: a, text: t, derived_from: C1, checks: [{label: l, stage: s, metric: m, claimed: 1}]}\n",
            "C1: derived_from 'C1'",
        ),
    ],
)
def test_the_claims_file_refuses_requires_without_untested_unknown_claim_fields_and_a_bad_derived_from(tmp_path, body, match):
    bad = tmp_path / "claims.yaml"
    bad.write_text(body)
    with pytest.raises(claims.ClaimsFileError, match=match):
        claims.load_claims(bad)


def test_derived_from_another_claim_loads(tmp_path):
    good = tmp_path / "claims.yaml"
    derived = "  - {id: C2, area: a, text: t, derived_from: C1, checks: [{label: l, stage: s, metric: m, claimed: 1}]}\n"
    good.write_text("claims:\n" + CLAIM + derived)
    assert [c.derived_from for c in claims.load_claims(good)] == [None, "C1"]


def test_history_keeps_no_relative_check_in_ms():
    """A relative check in ms (a wait, a decompression time) is one machine's figure: the history drops it
    (history.RATIO_UNITS); the ratio beside it is kept."""
    from perfkit import history

    def result(label: str, unit: str) -> claims.ClaimResult:
        return claims.ClaimResult("C7", label, "compression", "relative", 5.0, unit, "at_most", 0.1, 3.0, 2.5, 3.5, claims.HOLDS, "fixture")

    run = history.entry(
        [result("decompression time", "ms"), result("size reduction", "%")], {"compression": {"started_at": "2026-12-05T20:00:00+00:00"}}
    )
    assert list(run["figures"]) == ["C7:size reduction"]


def test_the_committed_claims_file_loads_and_every_untested_text_formats():
    """data/claims.yaml as committed: every `requires` check has a why that formats, even on a summary lacking its figures."""
    from conftest import CLAIMS_FILE

    loaded = claims.load_claims(CLAIMS_FILE)
    required = [c for claim in loaded for c in claim.checks if c.requires]
    assert required  # C5, C9, C13, C16, C17, C19, C20
    for check in required:
        (result,) = claims.judge_summary([check], {check.requires: False})
        assert result.status == claims.NOT_TESTED and result.why, check.key
    assert {c.id: c.derived_from for c in loaded if c.derived_from} == {"C14": "C11", "C15": "C11"}
