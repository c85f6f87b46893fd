"""The report stage: every published claim against what the stages measured on this machine.

Each stage judges its own checks (`perfkit.claims`) and writes the verdicts into its metrics.json
(`summary.claims`); this stage only gathers them, claim by claim, from the metrics.json files DVC
hands it. It never re-runs a model. A check whose stage is not built yet or has not run is
"not measured yet", with that reason; a claim nothing here can measure says why.

It also checks the claim set against itself: with N closed-loop users, Little's law bounds
throughput by N / mean latency, so a claimed QPS above that bound cannot come from that test.

Last, it publishes everything as a static site (`perfkit.site`): experiments/report/site/index.html
with the claims, the before/after story and where each figure came from, and a page per stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from perfkit.claims import NOT_MEASURED, STATUSES, Check, Claim, ClaimResult, ClaimVerdict, judge
from perfkit.config import CLAIMS, Config, Section
from perfkit.results import RESULT_FILE
from perfkit.stages.base import Plot, StageResult, StageSpec

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


class ReportConfig(Section):
    users: int = Field(10, ge=1, description="closed-loop users of the article's test, for the Little's law check")


STAGE = StageSpec(
    name="report",
    title="Report: the published claims against this machine",
    description="Every seed claim (`data/claims.yaml`), each judged by the stage that measures it: claimed, measured "
    "(with its interval), rule, status and why; the claim set checked against Little's law; links to every stage.",
    run="perfkit.stages.report:run",
    section=ReportConfig,
    data=(CLAIMS,),
    plots=(Plot("claims", "check", "measured"),),
    upstream=("*",),
    outs=("experiments/report/site",),
    order=1000,
)


@dataclass(frozen=True)
class ConsistencyCheck:
    claims: str
    statement: str
    consistent: bool


def littles_law_consistency(users: int, latency_qps_pairs: list[tuple[str, float, float]]) -> list[ConsistencyCheck]:
    """For each (claims, mean latency s, claimed QPS): can `users` closed-loop users reach that QPS?"""
    from perfkit.measure import littles_law_max_qps

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


def _stage_result(check: Check, experiments: Path, built: set[str]) -> ClaimResult:
    """The verdict the check's stage wrote, or why there is none."""
    if check.kind == "not_measurable":
        return judge(check, None)
    if check.stage not in built:
        return judge(check, None, missing=f"the {check.stage} stage is not built yet")
    path = experiments / check.stage / "metrics.json"
    if not path.is_file():
        return judge(check, None, missing=f"the {check.stage} stage has not run (no metrics.json)")
    entry = json.loads(path.read_text()).get("summary", {}).get("claims", {}).get(check.key)
    if entry is None:
        return judge(check, None, missing=f"{check.stage}/metrics.json has no verdict for it (run the stage again)")
    fields = {k: entry.get(k) for k in ("claimed", "measured", "low", "high", "unit", "status", "why", "kind")}
    return ClaimResult(check.claim, check.label, check.stage, fields["kind"] or check.kind, fields["claimed"],
                       fields["unit"] or "", check.rule, check.tolerance, fields["measured"], fields["low"],
                       fields["high"], fields["status"] or NOT_MEASURED, fields["why"] or "")


def gather(claims: list[Claim], experiments: Path, built: set[str]) -> list[ClaimVerdict]:
    return [ClaimVerdict(c, tuple(_stage_result(k, experiments, built) for k in c.checks)) for c in claims]


@dataclass(frozen=True)
class ReportResult(StageResult):
    spec = STAGE
    verdicts: tuple[ClaimVerdict, ...]
    consistency: tuple[ConsistencyCheck, ...]
    stage_pages: dict[str, bool]  # stage -> has a page on the site (a saved result or an executed notebook)
    checks: tuple[Check, ...] = ()

    def variants(self) -> tuple[ClaimVerdict, ...]:
        return self.verdicts

    def counts(self) -> dict[str, int]:
        statuses = [v.status for v in self.verdicts]
        return {s: statuses.count(s) for s in STATUSES if statuses.count(s)}

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"claims_total": len(self.verdicts)}
        summary |= {f"claims_{status.replace(' ', '_').replace(',', '')}": n for status, n in self.counts().items()}
        summary["inconsistent_claim_sets"] = sum(not c.consistent for c in self.consistency)
        summary["claim_status"] = {v.claim.id: v.status for v in self.verdicts}
        return summary

    def claims(self) -> list[ClaimResult]:
        return []  # the report judges nothing itself: each stage's verdicts are in the claims table

    def claim_table(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for v in self.verdicts:
            for r in v.results:
                rows.append({
                    "claim": v.claim.id, "area": v.claim.area, "claim status": v.status, "check": r.label,
                    "kind": r.kind, "claimed": r.claimed, "measured": r.measured, "CI low": r.low, "CI high": r.high,
                    "unit": r.unit, "status": r.status, "why": r.why,
                })  # fmt: skip
        return pd.DataFrame(rows)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"claims": self.claim_table()}

    def figures(self) -> dict[str, Figure]:
        """Measured over claimed for every judged check, with its interval: 1 is the claim."""
        import matplotlib.pyplot as plt
        import seaborn as sns

        t = self.claim_table()
        judged = t[t["measured"].notna() & t["claimed"].notna() & (t["claimed"] != 0)].copy()
        fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(judged), 4) + 1))
        if not judged.empty:
            judged["label"] = judged["claim"] + " " + judged["check"]
            judged["measured / claimed"] = judged["measured"] / judged["claimed"]
            sns.scatterplot(data=judged, x="measured / claimed", y="label", hue="status", s=60, ax=ax)
            has_ci = judged["CI low"].notna()
            for _, row in judged[has_ci].iterrows():
                ax.plot([row["CI low"] / row["claimed"], row["CI high"] / row["claimed"]], [row["label"]] * 2, c="grey")
            ax.axvline(1.0, ls="--", c="grey")
            ax.set_xscale("log")
        ax.set(title="measured / claimed (1 = the article's figure; lines: 95% interval)", ylabel="")
        fig.tight_layout()
        return {"claims": fig}

    def links(self) -> str:
        """Markdown links to each stage's page on the published site (`make site` builds it, `make report` serves it)."""
        return "\n".join(
            [f"- [{s}](site/{s}.html)" if has_page else f"- {s}: not run yet" for s, has_page in self.stage_pages.items()]
            + ["- [the published site](site/index.html): the headline, every claim, where each figure comes from"]
        )

    def verdict(self) -> str:
        c = self.counts()
        return f"{len(self.verdicts)} claims: " + ", ".join(f"{n} {s}" for s, n in c.items())

    def conclusion(self) -> str:
        lines = [f"Of {len(self.verdicts)} claims: " + "; ".join(f"{n} {s}" for s, n in self.counts().items()) + "."]
        bad = [k.claims for k in self.consistency if not k.consistent]
        if bad:
            lines.append(f"The claim set is internally inconsistent ({', '.join(bad)}): Little's law rules it out.")
        lines.append("Internal consistency:\n\n" + "\n".join(f"- **{c.claims}**: {c.statement}" for c in self.consistency))
        lines.append("Stage reports:\n\n" + self.links())
        return "\n\n".join(lines)


def run(cfg: Config) -> ReportResult:
    import yaml

    from perfkit import stages
    from perfkit.claims import load_claims

    claims = load_claims(cfg.claims_path)
    built = set(stages.registry())
    experiments = cfg.experiments_dir
    raw = yaml.safe_load(cfg.claims_path.read_text())
    pairs = [(p["claims"], float(p["latency_s"]), float(p["qps"])) for p in raw.get("littles_law", [])]
    pages = {
        s: (experiments / s / RESULT_FILE).is_file() or (experiments / s / f"{s}.ipynb").is_file()
        for s in stages.upstream(STAGE)
    }
    result = ReportResult(
        tuple(gather(claims, experiments, built)), tuple(littles_law_consistency(cfg.report.users, pairs)), pages
    )
    publish(result, experiments, cfg.out_dir / "site")
    return result


def publish(result: ReportResult, experiments: Path, out: Path) -> Path:
    """The static site (`perfkit.site`) for this report; returns its index.html."""
    import matplotlib.pyplot as plt

    from perfkit import site

    figure = result.figures()["claims"]
    try:
        return site.build(experiments, out, list(result.stage_pages), title="perfkit: published claims, measured here",
                          summary=f"{result.verdict()}.", claims=result.claim_table(), claims_figure=figure)
    finally:
        plt.close(figure)
