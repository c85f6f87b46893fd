"""The claims check: each published claim against what the stages measured on this machine.

`data/claims.yaml` keeps the seed article's claims as data. A claim has zero or more checks, each
naming a stage, a value in that stage's metrics.json (a dotted path such as
`summary.int8_speedup`), the claimed figure and a rule:

- `at_least`: holds when measured >= claimed x (1 - tolerance) (speed-ups, accuracy kept);
- `at_most`: holds when measured <= claimed x (1 + tolerance) (latency, size, overhead).

A check whose stage has not run, or whose value is missing, is "not measured here", with the
reason; a claim with no check says why nothing here can measure it (`not_measurable`). The report
reads only metrics.json files: it never re-runs a model.

It also checks the claims against each other: with N closed-loop users, Little's law bounds
throughput by N / mean latency, so a claimed QPS above that bound cannot come from that test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from perfkit.measure import littles_law_max_qps

Rule = Literal["at_least", "at_most"]
HOLDS, FAILS, UNMEASURED = "holds", "does not hold", "not measured here"


@dataclass(frozen=True)
class Check:
    label: str
    stage: str
    metric: str
    claimed: float
    unit: str = ""
    rule: Rule = "at_least"
    tolerance: float = 0.0


@dataclass(frozen=True)
class Claim:
    id: str
    area: str
    text: str
    checks: tuple[Check, ...] = ()
    not_measurable: str | None = None


@dataclass(frozen=True)
class Verdict:
    claim: str
    area: str
    text: str
    label: str
    claimed: float | None
    measured: float | None
    unit: str
    status: str
    why: str
    stage: str | None = None


@dataclass(frozen=True)
class ConsistencyCheck:
    claims: str
    statement: str
    consistent: bool


def load_claims(path: Path) -> list[Claim]:
    raw = yaml.safe_load(path.read_text())
    claims = []
    for entry in raw["claims"]:
        checks = tuple(Check(**c) for c in entry.get("checks", []))
        if not checks and not entry.get("not_measurable"):
            raise ValueError(f"{path}: claim {entry['id']} needs checks or a not_measurable reason")
        claims.append(Claim(entry["id"], entry["area"], entry["text"], checks, entry.get("not_measurable")))
    return claims


def claim_checks(path: Path, claim_id: str) -> dict[str, Check]:
    """The checks of one claim, keyed by the metric each reads; empty if the claim has none or is absent.

    Keyed by metric, not position, so that a stage quoting a claimed figure takes the one beside the
    value it writes, whatever the order of the checks in the file.
    """
    claim = next((c for c in load_claims(path) if c.id == claim_id), None)
    return {} if claim is None else {c.metric: c for c in claim.checks}


def _lookup(metrics: dict[str, Any], dotted: str) -> Any:
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def judge(check: Check, measured: float) -> bool:
    if check.rule == "at_least":
        return measured >= check.claimed * (1 - check.tolerance)
    return measured <= check.claimed * (1 + check.tolerance)


def _stage_metrics(experiments: Path, stage: str) -> dict[str, Any] | None:
    path = experiments / stage / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_claims(claims: list[Claim], experiments: Path) -> list[Verdict]:
    verdicts = []
    for claim in claims:
        if not claim.checks:
            verdicts.append(
                Verdict(claim.id, claim.area, claim.text, "—", None, None, "", UNMEASURED, claim.not_measurable or "")
            )
            continue
        for check in claim.checks:
            metrics = _stage_metrics(experiments, check.stage)
            base = dict(claim=claim.id, area=claim.area, text=claim.text, label=check.label,
                        claimed=check.claimed, unit=check.unit, stage=check.stage)
            if metrics is None:
                verdicts.append(Verdict(**base, measured=None, status=UNMEASURED,
                                        why=f"the {check.stage} stage has not run (no metrics.json)"))
                continue
            value = _lookup(metrics, check.metric)
            if not isinstance(value, int | float) or isinstance(value, bool):
                verdicts.append(Verdict(**base, measured=None, status=UNMEASURED,
                                        why=f"{check.metric} absent from {check.stage}/metrics.json"))
                continue
            holds = judge(check, float(value))
            why = str(_lookup(metrics, "summary.verdict") or "")
            verdicts.append(Verdict(**base, measured=float(value), status=HOLDS if holds else FAILS, why=why))
    return verdicts


def littles_law_consistency(users: int, latency_qps_pairs: list[tuple[str, float, float]]) -> list[ConsistencyCheck]:
    """For each (claims, mean latency s, claimed QPS): can `users` closed-loop users reach that QPS?"""
    out = []
    for label, latency_s, qps in latency_qps_pairs:
        bound = littles_law_max_qps(users, latency_s)
        ok = qps <= bound
        statement = (
            f"{users} users at {latency_s:g} s mean latency allow at most {bound:.1f} QPS; "
            f"the claim says {qps:g} QPS: {'consistent' if ok else 'impossible in a closed-loop test'}"
        )
        out.append(ConsistencyCheck(label, statement, ok))
    return out


@dataclass
class ClaimsReport:
    verdicts: list[Verdict]
    consistency: list[ConsistencyCheck]
    stages: dict[str, bool] = field(default_factory=dict)  # stage -> has a report

    def table(self) -> pd.DataFrame:
        rows = [
            {
                "claim": v.claim,
                "area": v.area,
                "check": v.label,
                "claimed": v.claimed,
                "measured here": None if v.measured is None else round(v.measured, 4),
                "unit": v.unit,
                "verdict": v.status,
                "why": v.why,
            }
            for v in self.verdicts
        ]
        return pd.DataFrame(rows)

    def links(self) -> str:
        """Markdown links to each stage's own report, relative to experiments/report/."""
        items = [
            f"- [{s}](../{s}/{s}.html)" if has_html else f"- {s}: not run yet"
            for s, has_html in sorted(self.stages.items())
        ]
        return "\n".join(items)

    def counts(self) -> dict[str, int]:
        statuses = [v.status for v in self.verdicts]
        return {s: statuses.count(s) for s in (HOLDS, FAILS, UNMEASURED)}

    def metrics(self) -> dict[str, Any]:
        per_check = {
            f"{v.claim}:{v.label}": {"claimed": v.claimed, "measured": v.measured, "status": v.status}
            for v in self.verdicts
        }
        counts = self.counts()
        summary = {
            "checks_hold": counts[HOLDS],
            "checks_do_not_hold": counts[FAILS],
            "checks_not_measured": counts[UNMEASURED],
            "inconsistent_claim_sets": sum(not c.consistent for c in self.consistency),
            "verdict": self.conclusion(),
        }
        return {**per_check, "summary": summary}

    def conclusion(self) -> str:
        c = self.counts()
        measured = c[HOLDS] + c[FAILS]
        text = (
            f"Of {len(self.verdicts)} checks, {measured} were measured on this machine: {c[HOLDS]} hold and "
            f"{c[FAILS]} do not; {c[UNMEASURED]} could not be measured here."
        )
        bad = [k.claims for k in self.consistency if not k.consistent]
        if bad:
            text += f" The claim set is internally inconsistent ({', '.join(bad)}): Little's law rules it out."
        return text


def build(claims_path: Path, experiments: Path, users: int = 10) -> ClaimsReport:
    claims = load_claims(claims_path)
    verdicts = check_claims(claims, experiments)
    raw = yaml.safe_load(claims_path.read_text())
    pairs = [(p["claims"], float(p["latency_s"]), float(p["qps"])) for p in raw.get("littles_law", [])]
    stages = sorted({c.stage for claim in claims for c in claim.checks})
    return ClaimsReport(
        verdicts,
        littles_law_consistency(users, pairs),
        {s: (experiments / s / f"{s}.html").is_file() for s in stages},
    )
