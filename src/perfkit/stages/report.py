"""The report stage: every published claim judged against what the stages measured on this machine.

Stages measure and save their results; this stage alone reads `data/claims.yaml` and judges: it
loads each stage's saved result (`experiments/<stage>/result.json`) and judges every check on that
result's summary (`perfkit.claims.judge_summary`), so a claim edit reruns this stage alone, in
seconds. It never re-runs a model. A check whose stage has not run is "not measured yet", with that
reason; a claim nothing here can measure says why; one the measurement does not test at the claim's
scale is "not tested here", with what would test it. A claim computed from another's figure
(`derived_from`) is listed under it and left out of the counts.

It also
- checks the claim set against itself: with N closed-loop users, Little's law bounds throughput by
  N / mean latency, so a claimed QPS above that bound cannot come from that test;
- flags every headline figure whose 95% interval is wider than ±15% of its scale, with the rounds
  that would tighten it;
- appends this run's figures to `experiments/history.json` (the stage's run only: `perfkit site` re-renders
  and records nothing) and shows each beside the previous runs' (`perfkit.history`): intervals that do
  not overlap, runs on another CPU, verdicts that changed;
- lists each stage's wall time against its budget.

Last, it publishes everything as a static site (`perfkit.site`): experiments/report/site/index.html.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from perfkit import history
from perfkit.budgets import WHOLE_RUN, budget_rows
from perfkit.claims import STATUSES, Check, Claim, ClaimResult, ClaimVerdict, judge, judge_summary
from perfkit.config import Config, Section
from perfkit.layout import CLAIMS
from perfkit.stages.base import Plot, StageResult, StageSpec

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


class ReportConfig(Section):
    users: int = Field(10, ge=1, description="closed-loop users of the article's test, for the Little's law check")
    precision_limit: float = Field(0.15, gt=0, lt=1, description="largest 95% half-width of a headline figure, as a share of its scale")
    history_runs: int = Field(4, ge=0, le=20, description="previous runs shown beside this one")


STAGE = StageSpec(
    name="report",
    budget_s=60,
    title="Report: the published claims against this machine",
    description="Every seed claim (`data/claims.yaml`) judged on the figures its stage measured: claimed, measured "
    "(with its interval), rule, status and why; the figures beside the previous runs'; the claim set checked against "
    "Little's law; links to every stage.",
    run="perfkit.stages.report:run",
    section=ReportConfig,
    data=(CLAIMS,),
    plots=(Plot("claims", "check", "measured"),),
    upstream=("*",),
    upstream_file="result.json",
    outs=("experiments/report/site",),  # experiments/history.json is appended to and committed, never removed: not a DVC out
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


RUN_TO_RUN = (
    "Each judged ratio beside the previous runs' (`experiments/history.json`): `overlaps` is false where today's "
    "95% interval misses a previous one; `other_cpu` names runs on another CPU (compare ratios only); "
    "`status_change` names a verdict that changed since the last run."
)
PRECISION = (
    "Every judged ratio with an interval: its 95% half-width as a share of its scale (the figure, or the claimed "
    "one when larger), against the target (`report.precision_limit`), with the rounds that would meet it."
)


@dataclass(frozen=True)
class StageFigures:
    """What the report reads of one stage: its saved result's summary and provenance, or why there is none."""

    summary: dict[str, Any] | None
    provenance: dict[str, Any]
    missing: str = ""


def read_stages(experiments: Path, names: list[str]) -> tuple[dict[str, Any], dict[str, StageFigures]]:
    """Each stage's saved result (None: not run) and its figures, each result loaded once."""
    from perfkit import results

    loaded: dict[str, Any] = {}
    figures: dict[str, StageFigures] = {}
    for name in names:
        try:
            result = results.load(experiments / name)
        except results.ResultFileError as exc:
            loaded[name], figures[name] = None, StageFigures(None, {}, f"the {name} stage has no readable result: {exc}")
            continue
        loaded[name] = result
        figures[name] = StageFigures(result.summary(), dict(result.provenance or {}))
    return loaded, figures


def judge_claims(claims: list[Claim], figures: dict[str, StageFigures]) -> list[ClaimVerdict]:
    """Every check judged on its stage's summary (or "not measured yet", with why)."""
    verdicts = []
    for claim in claims:
        out = []
        for check in claim.checks:
            stage = figures.get(check.stage)
            if check.kind == "not_measurable":
                out.append(judge(check, None))
            elif stage is None:
                out.append(judge(check, None, missing=f"no {check.stage} stage in this checkout"))
            elif stage.summary is None:
                out.append(judge(check, None, missing=stage.missing))
            else:
                out.append(with_transfer(judge_summary([check], stage.summary)[0], check, figures.get("engines")))
        verdicts.append(ClaimVerdict(claim, tuple(out)))
    return verdicts


def with_transfer(result: ClaimResult, check: Check, engines: StageFigures | None) -> ClaimResult:
    """The check's why, plus what the engines stage found where it shows the check's effect does not carry over to llama.cpp."""
    summary = engines.summary if engines is not None else None
    if not check.effect or not summary or summary.get(f"{check.effect}_transfers") is not False:
        return result
    ours, theirs = summary.get(f"{check.effect}_perfkit_ratio"), summary.get(f"{check.effect}_llama_ratio")
    note = (
        f"On llama.cpp this effect does not transfer (engines stage: {theirs:.2f}x there against {ours:.2f}x on perfkit's engine), "
        "so the figure is the reference engine's, not every engine's."
    )
    return replace(result, why=f"{result.why} {note}".strip())


def engine_of(provenance: Mapping[str, Any]) -> str:
    """Which engine a stage's figures come from, as its provenance recorded it."""
    engine = provenance.get("engine")
    return f"perfkit, {engine}" if engine else "perfkit (its form not recorded)"


@dataclass(frozen=True)
class ReportResult(StageResult):
    spec = STAGE
    verdicts: tuple[ClaimVerdict, ...]
    consistency: tuple[ConsistencyCheck, ...]
    stage_pages: dict[str, bool]  # stage -> has a saved result (a page on the site)
    agreement: pd.DataFrame  # the figures beside the previous runs' (perfkit.history)
    precision: tuple[dict[str, Any], ...]
    budgets: tuple[dict[str, Any], ...]
    engines: dict[str, str] = field(default_factory=dict)  # stage -> the engine its figures come from

    def variants(self) -> tuple[ClaimVerdict, ...]:
        return self.verdicts

    def counted(self) -> list[ClaimVerdict]:
        """The claims that are evidence of their own: a claim derived from another's figure is not counted."""
        return [v for v in self.verdicts if v.claim.derived_from is None]

    def counts(self) -> dict[str, int]:
        statuses = [v.status for v in self.counted()]
        return {s: statuses.count(s) for s in STATUSES if statuses.count(s)}

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"claims_total": len(self.counted()), "claims_derived": len(self.verdicts) - len(self.counted())}
        summary |= {f"claims_{status.replace(' ', '_').replace(',', '')}": n for status, n in self.counts().items()}
        summary["inconsistent_claim_sets"] = sum(not c.consistent for c in self.consistency)
        summary["figures_too_wide"] = sum(not p["within"] for p in self.precision)
        stages = [b for b in self.budgets if b["stage"] != WHOLE_RUN]
        summary["stages_over_budget"] = ",".join(b["stage"] for b in stages if b["over"]) or "none"
        whole = next((b for b in self.budgets if b["stage"] == WHOLE_RUN), None)
        if whole is not None:
            summary |= {"whole_run_s": whole["wall s"], "whole_run_over_budget": whole["over"]}
        if len(self.agreement):
            summary["figures_disagreeing_with_previous"] = int((self.agreement["overlaps"] == False).sum())  # noqa: E712
            summary["verdicts_changed"] = int((self.agreement["status_change"] != "").sum())
        summary["claim_status"] = {v.claim.id: v.status for v in self.verdicts}
        return summary

    def claim_table(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for v in self._listed():
            claim = v.claim.id if v.claim.derived_from is None else f"{v.claim.id} (from {v.claim.derived_from})"
            for r in v.results:
                rows.append({
                    "claim": claim, "area": v.claim.area, "claim status": v.status, "check": r.label, "stage": r.stage,
                    "engine": self.engines.get(r.stage, ""),
                    "kind": r.kind, "claimed": r.claimed, "measured": r.measured, "CI low": r.low, "CI high": r.high,
                    "unit": r.unit, "status": r.status, "why": r.why,
                })  # fmt: skip
        return pd.DataFrame(rows)

    def _listed(self) -> list[ClaimVerdict]:
        """Claims in file order, each derived claim right after the claim it derives from."""
        out = []
        for v in self.counted():
            out.append(v)
            out += [d for d in self.verdicts if d.claim.derived_from == v.claim.id]
        return out + [d for d in self.verdicts if d not in out]

    def tables(self) -> dict[str, pd.DataFrame]:
        import pandas as pd

        return {
            "claims": self.claim_table(),
            "agreement": self.agreement,
            "precision": pd.DataFrame(list(self.precision)),
            "budgets": pd.DataFrame(list(self.budgets)),
        }

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
            ax.set_xscale("symlog", linthresh=0.1)
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
        return f"{len(self.counted())} claims judged; " + "; ".join(f"{s}: {n}" for s, n in c.items())

    def conclusion(self) -> str:
        derived = [v for v in self.verdicts if v.claim.derived_from]
        lines = [
            f"{len(self.counted())} claims judged; "
            + "; ".join(f"{s}: {n}" for s, n in self.counts().items())
            + "."
            + (
                " Not counted, because each is computed from another claim's figure: "
                + ", ".join(f"{v.claim.id} (from {v.claim.derived_from}, {v.status})" for v in derived)
                + "."
                if derived
                else ""
            )
        ]
        wide = [p for p in self.precision if not p["within"]]
        if wide:
            lines.append(
                "Figures whose 95% interval is wider than the precision target, and what would tighten them:\n\n"
                + "\n".join(
                    f"- **{p['figure']}**: ±{p['half-width %']:.0f}% of its scale"
                    + (
                        f" over {p['rounds']} rounds; about {p['rounds needed']} rounds would do"
                        if p["rounds needed"]
                        else " (more repeats or samples per figure)"
                    )
                    for p in wide
                )
            )
        if len(self.agreement):
            changed = self.agreement[self.agreement["status_change"] != ""]
            apart = self.agreement[self.agreement["non_overlapping_with"] != ""]
            previous = len(history.previous_runs(self.agreement))
            lines.append(
                (
                    "Run to run, against no previous run (none recorded): "
                    if not previous
                    else f"Run to run ({previous} previous runs shown): "
                )
                + f"{len(apart)} figures whose interval does not overlap a previous run's, "
                f"{len(changed)} verdicts that changed since the last run"
                + ("".join(f"; {r.figure}: {r.status_change}" for r in changed.itertuples()) if len(changed) else "")
                + "."
            )
        over = [b for b in self.budgets if b["over"]]
        if over:
            lines.append(
                "Over their time budget: " + ", ".join(f"{b['stage']} ({b['wall s']:.0f} s of {b['budget s']:.0f})" for b in over) + "."
            )
        bad = [k.claims for k in self.consistency if not k.consistent]
        if bad:
            lines.append(f"The claim set is internally inconsistent ({', '.join(bad)}): Little's law rules it out.")
        lines.append("Internal consistency:\n\n" + "\n".join(f"- **{c.claims}**: {c.statement}" for c in self.consistency))
        lines.append("Stage reports:\n\n" + self.links())
        return "\n\n".join(lines)


def run(cfg: Config, *, record: bool = True) -> ReportResult:
    """Judge every claim, show the figures beside the previous runs' and publish the site. Only the stage's own run
    (`dvc repro`) appends this run to experiments/history.json; `perfkit site` (`record=False`) re-renders committed
    results and leaves the history as committed."""
    import yaml

    from perfkit import stages
    from perfkit.claims import load_claims

    claims = load_claims(cfg.claims_path)
    experiments = cfg.experiments_dir
    raw = yaml.safe_load(cfg.claims_path.read_text())
    pairs = [(p["claims"], float(p["latency_s"]), float(p["qps"])) for p in raw.get("littles_law", [])]
    loaded, figures = read_stages(experiments, list(stages.upstream(STAGE)))
    verdicts = judge_claims(claims, figures)
    rounds = {name: (f.summary or {}).get("rounds") for name, f in figures.items()}
    run_record = history.entry([r for v in verdicts for r in v.results], {n: f.provenance for n, f in figures.items() if f.summary})
    path = experiments / history.HISTORY_FILE
    if record and run_record["figures"]:  # no figure: no run to record
        past = history.record(path, run_record)
    else:
        past = history.load(path)
    result = ReportResult(
        tuple(verdicts),
        tuple(littles_law_consistency(cfg.report.users, pairs)),
        {n: r is not None for n, r in loaded.items()},
        history.agreement(past, run_record, cfg.report.history_runs),
        tuple(history.precision_rows([r for v in verdicts for r in v.results], rounds, cfg.report.precision_limit)),
        tuple(budget_rows({name: f.provenance for name, f in figures.items()})),
        {name: engine_of(f.provenance) for name, f in figures.items()},
    )
    publish(result, loaded, cfg.out_dir / "site")
    return result


def publish(result: ReportResult, stage_results: dict[str, Any], out: Path) -> Path:
    """The static site (`perfkit.site`) for this report; returns its index.html."""
    import matplotlib.pyplot as plt

    from perfkit import site

    figure = result.figures()["claims"]
    tables = result.tables()
    try:
        return site.build(
            out,
            stage_results,
            title="perfkit: published claims, measured here",
            summary=f"{result.verdict()}.",
            claims=tables["claims"],
            claims_figure=figure,
            sections=(
                ("Run to run", RUN_TO_RUN, tables["agreement"]),
                ("Precision", PRECISION, tables["precision"]),
                ("Stage time", "Each stage's wall time against its budget on the reference 2-core CPU.", tables["budgets"]),
            ),
        )
    finally:
        plt.close(figure)
