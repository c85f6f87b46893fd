"""Claims as data, judged in one place.

`data/claims.yaml` keeps the seed article's claims. Each claim has checks; each check names the
stage that measures it, a key of that stage's summary (`int8_dynamic_speedup`), the claimed figure,
a rule and a *kind*, which decides what a verdict can say:

- `relative`: a ratio or a % change between two variants measured here, side by side (speed-ups,
  reductions, accuracy kept). Comparable across machines: holds / does not hold / inconclusive.
- `absolute`: a figure from the article's own test bed ("2.8 s" on a 13B model and an A100). Not
  comparable with another model and machine: shown as context, status "different test bed".
- `behaviour`: a stated behaviour (the summary key is true when it was observed).
- `simulated`: measured in a simulation, labelled so whatever the number says.
- `context`: a figure shown beside the one judged (weight bytes beside peak memory): never judged.
- `not_measurable`: nothing on this kind of machine can measure it; the check carries the reason.

Rules: `at_least` passes at measured >= claimed x (1 - tolerance), `at_most` at measured <=
claimed x (1 + tolerance). When the stage gives a between-round interval (`<key>_ci_low`,
`<key>_ci_high` beside the value), the verdict is *holds* or *does not hold* only when the whole
interval clears the threshold; an interval that straddles it is *inconclusive*. A single figure
with no interval is judged as it stands and the why says so. A check may name a quality gate (a
boolean summary key): a speed-up that holds while its variant fails the gate is not a plain hold.

A verdict of holds / does not hold needs a measurement that tests what the claim says, at its scale.
A check names that condition (`requires`, a boolean summary key: the student at the claim's size
ratio, the scaling model validated, the stack holding a cold-start lever); where it is false the
status is *not tested here* and the check's `untested` text, filled from the summary, says why and
what would test it. A claim computed from another claim's figure (`derived_from`) keeps its own
status but is listed under that claim and left out of the counts: it is not separate evidence.

Stages only measure and write figures; the report stage alone reads data/claims.yaml and judges
every check on its stage's summary (`judge_summary`), so a claim edit reruns the report alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Rule = Literal["at_least", "at_most"]
Kind = Literal["relative", "absolute", "behaviour", "simulated", "context", "not_measurable"]

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive"
GATE_FAILED = "holds for speed, fails the quality gate"
TEST_BED = "different test bed"
CONTEXT = "context, not judged"
SEEN = "behaviour seen"
NOT_SEEN = "behaviour not seen"
SIMULATED = "simulated"
NOT_MEASURABLE = "not measurable here"
NOT_TESTED = "not tested here"
NOT_MEASURED = "not measured yet"
# What each status means, in the order a reader meets them (the published site's legend).
MEANINGS = {
    HOLDS: "measured here as the claim says it, and the 95% interval clears the claimed figure (less its tolerance)",
    FAILS: "tested as the claim says it, and the interval falls short",
    INCONCLUSIVE: "tested, but the interval straddles the claimed figure: more rounds would decide",
    GATE_FAILED: "the speed holds but the variant fails its quality gate, so the claim as a whole does not",
    NOT_TESTED: "this machine or budget cannot test what the claim says (why, and what would, is given)",
    TEST_BED: "an absolute figure from the article's own hardware: shown beside this machine's, not judged",
    CONTEXT: "a figure shown beside the judged one (another reading of the same claim)",
    SEEN: "a behaviour the claim describes, observed in a real run",
    NOT_SEEN: "a behaviour the claim describes, not observed",
    SIMULATED: "from a simulation, not a measurement: said so, never counted as holding",
    NOT_MEASURABLE: "needs hardware this machine lacks (a GPU)",
    NOT_MEASURED: "the stage that measures it has not run",
}
STATUSES = (HOLDS, FAILS, INCONCLUSIVE, GATE_FAILED, NOT_TESTED, TEST_BED, CONTEXT, SEEN, NOT_SEEN, SIMULATED, NOT_MEASURABLE, NOT_MEASURED)


class ClaimsFileError(ValueError):
    """data/claims.yaml is malformed; the message names the claim and the field."""


@dataclass(frozen=True)
class Check:
    """One measurable part of a claim."""

    claim: str
    label: str
    stage: str
    metric: str = ""
    claimed: float | None = None
    unit: str = ""
    rule: Rule = "at_least"
    tolerance: float = 0.0
    kind: Kind = "relative"
    gate: str | None = None
    reason: str = ""
    requires: str | None = None  # a boolean summary key: the measurement tests what the claim says
    untested: str = ""  # why not, and what would test it: a str.format template over the summary
    effect: str | None = None  # the engines stage's effect this figure is an instance of (its summary's `<effect>_transfers`)

    @property
    def key(self) -> str:
        return f"{self.claim}:{self.label}"

    @property
    def threshold(self) -> float:
        if self.claimed is None:
            raise ValueError(f"{self.key}: no claimed figure")
        scale = 1 - self.tolerance if self.rule == "at_least" else 1 + self.tolerance
        return self.claimed * scale

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.rule == "at_least" else value <= self.threshold


@dataclass(frozen=True)
class Claim:
    id: str
    area: str
    text: str
    checks: tuple[Check, ...]
    derived_from: str | None = None  # the claim whose figure this one is computed from


@dataclass(frozen=True)
class Estimate:
    """A measured figure with its between-round 95% interval when there is one."""

    value: float
    low: float | None = None
    high: float | None = None

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], key: str) -> Estimate | None:
        value = summary.get(key)
        if isinstance(value, bool):
            return cls(float(value))
        if not isinstance(value, int | float) or not math.isfinite(value):
            return None
        low, high = summary.get(f"{key}_ci_low"), summary.get(f"{key}_ci_high")
        if isinstance(low, int | float) and isinstance(high, int | float):
            return cls(float(value), float(low), float(high))
        return cls(float(value))

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def text(self, unit: str = "") -> str:
        out = f"{_fmt(self.value)}{_unit(unit)}"
        if self.has_interval:
            out += f" (95% CI {_fmt(self.low)}–{_fmt(self.high)})"  # type: ignore[arg-type]
        return out


@dataclass(frozen=True)
class ClaimResult:
    """One check's verdict, with a generated sentence that names the rule and the margin."""

    claim: str
    label: str
    stage: str
    kind: Kind
    claimed: float | None
    unit: str
    rule: Rule
    tolerance: float
    measured: float | None
    low: float | None
    high: float | None
    status: str
    why: str

    @property
    def key(self) -> str:
        return f"{self.claim}:{self.label}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: float) -> str:
    """A figure in a sentence: 0.0123 / 1.23 / 12.3 / 123 / 21,367 (e-notation only below 0.0001)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _unit(unit: str) -> str:
    return "" if not unit else (unit if unit in ("%", "x") else f" {unit}")


def _result(check: Check, estimate: Estimate | None, status: str, why: str) -> ClaimResult:
    return ClaimResult(
        check.claim,
        check.label,
        check.stage,
        check.kind,
        check.claimed,
        check.unit,
        check.rule,
        check.tolerance,
        None if estimate is None else estimate.value,
        None if estimate is None else estimate.low,
        None if estimate is None else estimate.high,
        status,
        why,
    )


def _rule_text(check: Check) -> str:
    word = "at least" if check.rule == "at_least" else "at most"
    sign = "−" if check.rule == "at_least" else "+"
    tol = f" ({_fmt(check.claimed)}{_unit(check.unit)} {sign}{check.tolerance:.0%})" if check.tolerance else ""  # type: ignore[arg-type]
    return f"{word} {_fmt(check.threshold)}{_unit(check.unit)}{tol}"


def judge(check: Check, estimate: Estimate | None, *, gate_passed: bool | None = None, missing: str = "") -> ClaimResult:
    """The verdict on one check, from the figure a stage measured (None: not measured, `missing` says why)."""
    if check.kind == "not_measurable":
        return _result(check, None, NOT_MEASURABLE, check.reason or "nothing on this machine can measure it")
    if estimate is None:
        why = missing or f"{check.metric} is not in the {check.stage} stage's summary"
        return _result(check, None, NOT_MEASURED, why)
    measured = estimate.text(check.unit)
    if check.kind == "behaviour":
        seen = estimate.value >= 0.5
        return _result(
            check,
            estimate,
            SEEN if seen else NOT_SEEN,
            f"{check.reason or check.label}: {'observed' if seen else 'not observed'} in this run",
        )
    if check.kind == "context":
        return _result(check, estimate, CONTEXT, f"{check.reason or check.label}: {measured}, shown beside the judged figure")
    if check.kind == "absolute":
        return _result(
            check,
            estimate,
            TEST_BED,
            f"the article's {_fmt(check.claimed)}{_unit(check.unit)} is from its own test bed (LLaMA-2 13B, A100); "  # type: ignore[arg-type]
            f"measured here {measured}, shown as context, not judged",
        )
    rule = _rule_text(check)
    if estimate.has_interval:
        low_ok, high_ok = check.passes(estimate.low), check.passes(estimate.high)  # type: ignore[arg-type]
        passes: bool | None = True if low_ok and high_ok else False if not low_ok and not high_ok else None
    else:
        passes = check.passes(estimate.value)
    if check.kind == "simulated":
        outcome = {True: "would hold", False: "would not hold", None: "is inconclusive"}[passes]
        return _result(check, estimate, SIMULATED, f"in a simulation, not a measurement: {measured} against {rule}: {outcome}")
    basis = "" if estimate.has_interval else " (one figure, no between-round interval)"
    if passes is None:
        return _result(check, estimate, INCONCLUSIVE, f"measured {measured} straddles {rule}{basis}")
    if passes and gate_passed is False:
        return _result(
            check, estimate, GATE_FAILED, f"measured {measured} against {rule}, but the variant fails the quality gate ({check.gate})"
        )
    margin = estimate.value - check.threshold
    return _result(
        check,
        estimate,
        HOLDS if passes else FAILS,
        f"measured {measured} against {rule}: {'holds' if passes else 'does not hold'} by {_fmt(abs(margin))}{_unit(check.unit)}{basis}",
    )


class _Figures(dict):
    """A summary for `str.format_map`: a figure it lacks reads as nan rather than failing the report."""

    def __missing__(self, key: str) -> float:
        return math.nan


def untested(check: Check, estimate: Estimate | None, summary: Mapping[str, Any]) -> ClaimResult:
    """*Not tested here*: the figure (when there is one) is shown, the check's `untested` text says why."""
    try:
        reason = check.untested.format_map(_Figures(summary)) if check.untested else f"{check.requires} is false"
    except (ValueError, TypeError) as exc:
        raise ClaimsFileError(f"{check.key}: its untested text does not format with the summary: {exc}") from exc
    shown = f"measured {estimate.text(check.unit)}, not a test of the claim: " if estimate is not None else ""
    return _result(check, estimate, NOT_TESTED, shown + reason)


def judge_summary(checks: Iterable[Check], summary: Mapping[str, Any]) -> list[ClaimResult]:
    """Each check judged on `summary[check.metric]`, with its interval, its quality gate and whether it tests the claim."""
    out = []
    for check in checks:
        estimate = Estimate.from_summary(summary, check.metric)
        if check.requires and check.kind != "not_measurable":
            tested = summary.get(check.requires)
            if tested is None:
                out.append(judge(check, None, missing=f"{check.requires} is not in the {check.stage} stage's summary"))
                continue
            if not tested:
                out.append(untested(check, estimate, summary))
                continue
        gate = summary.get(check.gate) if check.gate else None
        out.append(judge(check, estimate, gate_passed=None if gate is None else bool(gate)))
    return out


def claim_status(statuses: Iterable[str]) -> str:
    """One status for a claim with several checks: all alike → that; any fails → fails; any not tested → not tested;
    every judged check holds → holds; else inconclusive."""
    found = list(statuses)
    if not found:
        return NOT_MEASURED
    if len(set(found)) == 1:
        return found[0]
    if FAILS in found or NOT_SEEN in found:
        return FAILS
    if NOT_TESTED in found:
        return NOT_TESTED
    judged = [s for s in found if s not in (TEST_BED, CONTEXT, NOT_MEASURABLE)]
    if judged and all(s in (HOLDS, SEEN) for s in judged):
        return HOLDS
    if all(s in (NOT_MEASURED, NOT_MEASURABLE, TEST_BED, CONTEXT) for s in found):
        return NOT_MEASURED if NOT_MEASURED in found else TEST_BED
    if GATE_FAILED in found:
        return GATE_FAILED
    return INCONCLUSIVE


# ---------------------------------------------------------------------------------------------------
# claims.yaml

_CHECK_FIELDS = {f for f in Check.__dataclass_fields__ if f != "claim"}
_CLAIM_FIELDS = {"id", "area", "text", "checks", "derived_from"}


def load_claims(path: Path) -> list[Claim]:
    """Parse data/claims.yaml; a malformed entry is refused naming the claim and the field."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    claims = []
    for entry in raw.get("claims", []):
        cid = entry.get("id", "?")
        unknown = set(entry) - _CLAIM_FIELDS
        if unknown:
            raise ClaimsFileError(f"{path}: {cid}: unknown claim field(s) {sorted(unknown)}; allowed: {sorted(_CLAIM_FIELDS)}")
        checks = []
        for item in entry.get("checks", []):
            unknown = set(item) - _CHECK_FIELDS
            if unknown:
                raise ClaimsFileError(f"{path}: {cid}: unknown check field(s) {sorted(unknown)}; allowed: {sorted(_CHECK_FIELDS)}")
            check = Check(claim=cid, **item)
            if check.kind not in Kind.__args__:  # type: ignore[attr-defined]
                raise ClaimsFileError(f"{path}: {cid}: kind {check.kind!r}; allowed: {', '.join(Kind.__args__)}")  # type: ignore[attr-defined]
            if check.kind != "not_measurable" and (not check.metric or (check.claimed is None and check.kind != "context")):
                raise ClaimsFileError(f"{path}: {cid}: a {check.kind} check needs metric and claimed (a context check: metric)")
            if check.requires and not check.untested:
                raise ClaimsFileError(f"{path}: {cid}: {check.label}: requires needs an untested text (why, what would test it)")
            checks.append(check)
        if not checks:
            raise ClaimsFileError(f"{path}: claim {cid} needs at least one check (kind: not_measurable with a reason)")
        claims.append(Claim(cid, entry.get("area", ""), entry.get("text", ""), tuple(checks), entry.get("derived_from")))
    ids = {c.id for c in claims}
    for c in claims:
        if c.derived_from is not None and (c.derived_from not in ids or c.derived_from == c.id):
            raise ClaimsFileError(f"{path}: {c.id}: derived_from {c.derived_from!r}; allowed: another claim's id")
    return claims


@dataclass(frozen=True)
class ClaimVerdict:
    """A whole claim: its checks' results and one status."""

    claim: Claim
    results: tuple[ClaimResult, ...] = field(default_factory=tuple)

    @property
    def status(self) -> str:
        return claim_status(r.status for r in self.results)
