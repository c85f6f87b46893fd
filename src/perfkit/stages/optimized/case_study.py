"""The document-summary case study (C20) of the optimized stage: a summary service's documents per minute.

A service receives many documents at once, so in each round every stack's server, right after its
arm's load, gets its documents together (`perfkit.casestudy.summarize_all`: each a map-reduce, all
in flight at once, so a batching server shares its batches among them): the optimized stack and,
where it changes the precision, the same stack in fp32 (the "batching only" arm, or an arm of its own
without the ablation) get `documents`
documents; the sequential fp32 baseline, which cannot gain from concurrency (its documents per minute
are one document's latency, however many it gets), gets `baseline_documents` of them, the next ones
each round, so that its summaries over the rounds cover more documents than one round's. Stacks take
turns within each round (rounds interleaved), and the gain is the mean of the per-round paired ratios.

Quality: ROUGE-L of each stack's summaries (its first round's) against the baseline's over all its
rounds, on the documents both summarized,
for the final summaries (the gate) and the map step's chunk summaries (where greedy paths part
before the reduce step compounds it). A similarity, not a quality score. When the optimized stack
fails the gate, the best stack that passes it is reported beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit.casestudy import Chapter, Summary
from perfkit.config import Config
from perfkit.endpoints.base import Endpoint
from perfkit.measure import Spread, ratio, summary_text
from perfkit.serving.launch import launch

if TYPE_CHECKING:
    import pandas as pd

SERVICE_DOCUMENTS = 8  # documents submitted at once that make a service load (C20), not one document's latency
REFERENCE = "baseline"
FP32_STACK = "fp32 batched"  # the stack without its precision change: the fastest that may pass the similarity gate


@dataclass(frozen=True)
class StackRound:
    """One stack in one round: its documents map-reduced at once on the stack's server."""

    summaries: tuple[Summary, ...]
    wall_s: float

    @property
    def docs_per_min(self) -> float:
        return 60.0 * len(self.summaries) / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True)
class Similarity:
    """One stack's summaries against the reference's, per document both summarized (ROUGE-L F1)."""

    final: tuple[float, ...]
    chunks: tuple[float, ...]  # the mean over each document's chunk summaries
    identical_chunks: int
    chunk_count: int

    @property
    def mean(self) -> float:
        return statistics.fmean(self.final) if self.final else float("nan")


def similarity(candidate: Sequence[Summary], reference: Sequence[Summary]) -> Similarity:
    """ROUGE-L of `candidate` against `reference`, on the documents (chapters) both summarized."""
    from perfkit import casestudy

    ref = {s.chapter: s for s in reference}
    pairs = [(c, ref[c.chapter]) for c in candidate if c.chapter in ref]
    final = casestudy.rouge_l([c.text for c, _ in pairs], [r.text for _, r in pairs])
    chunks = [
        casestudy.mean(casestudy.rouge_l(c.chunk_summaries, r.chunk_summaries)) for c, r in pairs if c.chunk_summaries and r.chunk_summaries
    ]
    same = [a == b for c, r in pairs for a, b in zip(c.chunk_summaries, r.chunk_summaries, strict=False)]
    return Similarity(tuple(final), tuple(chunks), sum(same), len(same))


@dataclass(frozen=True)
class CaseStudy:
    """C20: each stack's documents per minute as a service, in interleaved rounds, and how alike its summaries are."""

    chapters: tuple[Chapter, ...]
    rounds: dict[str, tuple[StackRound, ...]]  # stack -> one per round ("baseline", "optimized", maybe "fp32 batched")
    min_rouge_l: float

    def docs_per_min(self, stack: str) -> Spread:
        runs = self.rounds[stack]
        return Spread(tuple(r.docs_per_min for r in runs), 0.0, sum(len(r.summaries) for r in runs))

    def gain(self, stack: str) -> Spread:
        return ratio(self.docs_per_min(stack), self.docs_per_min(REFERENCE))

    def reference_summaries(self) -> tuple[Summary, ...]:
        """The baseline's summaries over every round: each round summarized the next of the documents."""
        return tuple(s for run in self.rounds[REFERENCE] for s in run.summaries)

    def similarity(self, stack: str) -> Similarity:
        return similarity(self.rounds[stack][0].summaries, self.reference_summaries())

    def passes(self, stack: str) -> bool:
        return stack == REFERENCE or self.similarity(stack).mean >= self.min_rouge_l

    def best_passing(self) -> str:
        """The stack with the most documents per minute among those that pass the similarity gate."""
        return max((s for s in self.rounds if self.passes(s)), key=lambda s: self.docs_per_min(s).mean)

    def summary(self) -> dict[str, Any]:
        concurrent = len(self.rounds["optimized"][0].summaries)
        out: dict[str, Any] = {
            "case_study_documents": len(self.chapters),
            "case_study_tokens": sum(c.tokens for c in self.chapters),
            "case_study_rounds": len(self.rounds[REFERENCE]),
            "case_study_concurrent_documents": concurrent,
            # a service's documents per minute needs documents that share the server at once
            "case_study_is_service": concurrent >= SERVICE_DOCUMENTS,
            "case_study_baseline_documents": len(self.rounds[REFERENCE][0].summaries),
            "case_study_baseline_chapters": len({s.chapter for s in self.reference_summaries()}),
        }
        out |= self.docs_per_min(REFERENCE).summary("baseline_docs_per_min")
        for stack in self.rounds:
            if stack == REFERENCE:
                continue
            key = "" if stack == "optimized" else stack.replace(" ", "_") + "_"
            sim = self.similarity(stack)
            out |= self.docs_per_min(stack).summary(f"{key or 'optimized_'}docs_per_min")
            out |= self.gain(stack).summary(f"{key}docs_per_min_gain")
            out |= {f"case_study_{key}rouge_l_mean": sim.mean, f"case_study_{key}similarity_gate_passed": self.passes(stack)}
            if stack == "optimized" and sim.chunks:
                out |= {
                    "case_study_chunk_rouge_l_mean": statistics.fmean(sim.chunks),
                    "case_study_identical_chunks": sim.identical_chunks,
                    "case_study_chunks": sim.chunk_count,
                }
        best = self.best_passing()
        out["case_study_best_passing_stack"] = best
        if best != REFERENCE:
            out["case_study_best_passing_gain"] = self.gain(best).mean
        return out

    def table(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for stack, runs in self.rounds.items():
            sim = None if stack == REFERENCE else self.similarity(stack)
            for i, run in enumerate(runs):
                rows.append(
                    {
                        "stack": stack,
                        "round": i,
                        "documents": len(run.summaries),
                        "wall (s)": run.wall_s,
                        "documents/min": run.docs_per_min,
                        "ROUGE-L vs baseline": None if sim is None else sim.mean,
                        "first summary": run.summaries[0].text if run.summaries else "",
                    }
                )
        return pd.DataFrame(rows)

    def text(self) -> str:
        s = self.summary()
        gate = "passes" if s["case_study_similarity_gate_passed"] else "fails"
        fig = summary_text(s, "docs_per_min_gain", ".2f", "x")
        text = (
            f"Case study (C20), a document-summary service: each round, {s['case_study_concurrent_documents']} documents "
            f"(the first tokens of {s['case_study_documents']} chapters, {s['case_study_tokens']:,} tokens) sent at once "
            f"to the optimized stack, {s['case_study_baseline_documents']} to the sequential baseline"
            + (
                f" (the next each round: {s['case_study_baseline_chapters']} over the rounds, so its documents per minute "
                "vary with its document as well as with the machine); "
                if s["case_study_rounds"] > 1
                else "; "
            )
            + f"{s['case_study_rounds']} interleaved rounds. Documents per minute: {summary_text(s, 'baseline_docs_per_min')} "
            f"on the baseline, {summary_text(s, 'optimized_docs_per_min')} on the optimized stack ({fig}). Its summaries score "
            f"ROUGE-L {s['case_study_rouge_l_mean']:.2f} against the baseline's on those {s['case_study_baseline_chapters']} "
            "(a similarity, not a quality score): "
            f"it {gate} the gate at {self.min_rouge_l:g}."
        )
        if not s["case_study_similarity_gate_passed"]:
            best = s["case_study_best_passing_stack"]
            gain = summary_text(s, best.replace(" ", "_") + "_docs_per_min_gain", ".2f", "x")
            text += f" The best stack that passes it: {best}" + (
                f", {gain} the baseline's documents per minute." if best != REFERENCE else " itself (no faster stack passes)."
            )
        if "case_study_chunk_rouge_l_mean" in s:
            text += (
                f" The map step's chunk summaries score {s['case_study_chunk_rouge_l_mean']:.2f} "
                f"({s['case_study_identical_chunks']} of {s['case_study_chunks']} word for word the baseline's); the "
                "reduce step reads them, so a difference there carries into the final summary "
                "(bench/case_study_similarity.py serves each optimization alone to find which one moves them)."
            )
        return text


def summarize_at(endpoint: Endpoint, cfg: Config, documents: Sequence[Chapter], tokenizer) -> StackRound:
    """`documents` map-reduced at once on the running `endpoint`."""
    from perfkit import casestudy

    study = cfg.optimized.case_study
    summaries, wall_s = casestudy.summarize_all(
        endpoint,
        documents,
        tokenizer,
        chunk_tokens=study.chunk_tokens,
        chunk_summary_tokens=study.chunk_summary_tokens,
        summary_tokens=study.summary_tokens,
    )
    return StackRound(summaries, wall_s)


def summarize_on(cfg: Config, overrides: dict[str, Any], documents: Sequence[Chapter], tokenizer) -> StackRound:
    """`documents` map-reduced at once on a fresh server with `overrides` (dotted params keys)."""
    with launch(cfg, overrides=overrides, probe_cold_start=False, timeout_s=cfg.optimized.launch_timeout_s) as handle:
        return summarize_at(handle, cfg, documents, tokenizer)


@dataclass
class CaseStudyRun:
    """The case study as it runs: each stack's documents sent to the server of that stack's arm, right after the arm's
    load in every round (so the stacks take turns, rounds interleaved, and no server is started for it alone)."""

    cfg: Config
    chapters: tuple[Chapter, ...]
    tokenizer: Any
    rounds: dict[str, list[StackRound]]

    def documents(self, stack: str) -> tuple[Chapter, ...]:
        """Every chapter; the baseline's `baseline_documents` of them, the next ones each round (wrapping around)."""
        if stack != REFERENCE:
            return self.chapters
        k = self.cfg.optimized.case_study.baseline_documents
        first = len(self.rounds.get(stack, [])) * k
        return tuple(self.chapters[(first + i) % len(self.chapters)] for i in range(min(k, len(self.chapters))))

    def on(self, stack: str) -> Callable[[Endpoint], None]:
        """What to run on a `stack` server once its load is done (`serve_under_load`'s `then`)."""
        return lambda endpoint: self.rounds.setdefault(stack, []).append(
            summarize_at(endpoint, self.cfg, self.documents(stack), self.tokenizer)
        )

    def result(self) -> CaseStudy:
        return CaseStudy(
            self.chapters, {name: tuple(runs) for name, runs in self.rounds.items()}, self.cfg.optimized.case_study.min_rouge_l
        )


def case_study_run(cfg: Config) -> CaseStudyRun | None:
    """The chapters and tokenizer the case study (C20) sends; None when `documents` is 0."""
    from perfkit import casestudy
    from perfkit.models import load_tokenizer

    study = cfg.optimized.case_study
    if study.documents == 0:
        return None
    tokenizer = load_tokenizer(cfg.resolve(cfg.model.path))
    chapters = tuple(casestudy.chapters(cfg.corpus_dir, tokenizer, study.documents, max_tokens=study.document_tokens))
    return CaseStudyRun(cfg, chapters, tokenizer, {})
