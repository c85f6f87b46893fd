"""The document-summary case study (C20) of the optimized stage: each stack summarizes the same chapters.

The map-reduce itself is `perfkit.casestudy`; this runs it on a fresh server per stack and compares
the stacks' summaries by ROUGE-L, for the final summaries (the gate) and for the map step's chunk
summaries, which show where two stacks' greedy paths part before the reduce step compounds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit.casestudy import Chapter, Summary, docs_per_min
from perfkit.config import Config
from perfkit.serving.launch import launch

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class CaseStudy:
    """C20: the same chapters summarized by map-reduce through each stack, and how alike their summaries are."""

    chapters: tuple[Chapter, ...]
    baseline: tuple[Summary, ...]
    optimized: tuple[Summary, ...]
    rouge_l: tuple[float, ...]  # optimized vs baseline, per chapter
    min_rouge_l: float
    chunk_rouge_l: tuple[float, ...] = ()  # the map step's chunk summaries, optimized vs baseline: mean per chapter

    @classmethod
    def compare(cls, chapters: tuple[Chapter, ...], baseline: tuple[Summary, ...], optimized: tuple[Summary, ...],
                min_rouge_l: float) -> CaseStudy:
        """ROUGE-L of `optimized` against `baseline`: the final summaries, and the chunk summaries per chapter."""
        from perfkit import casestudy

        rouge = casestudy.rouge_l([s.text for s in optimized], [s.text for s in baseline])
        chunk_rouge = tuple(casestudy.mean(casestudy.rouge_l(o.chunk_summaries, b.chunk_summaries))
                            for o, b in zip(optimized, baseline, strict=True))
        return cls(chapters, baseline, optimized, tuple(rouge), min_rouge_l, chunk_rouge)

    @property
    def identical_chunks(self) -> tuple[int, int]:
        """(chunk summaries word for word the baseline's, chunk summaries): where the greedy paths part."""
        pairs = [(o, b) for so, sb in zip(self.optimized, self.baseline) for o, b in zip(so.chunk_summaries, sb.chunk_summaries)]
        return sum(o == b for o, b in pairs), len(pairs)

    def summary(self) -> dict[str, Any]:
        base, opt = docs_per_min(self.baseline), docs_per_min(self.optimized)
        mean_rouge = sum(self.rouge_l) / len(self.rouge_l) if self.rouge_l else float("nan")
        out: dict[str, Any] = {"case_study_chapters": len(self.chapters),
                               "case_study_tokens": sum(c.tokens for c in self.chapters),
                               "baseline_docs_per_min": base, "optimized_docs_per_min": opt,
                               "case_study_rouge_l_mean": mean_rouge,
                               "case_study_similarity_gate_passed": mean_rouge >= self.min_rouge_l}
        if self.chunk_rouge_l:
            out["case_study_chunk_rouge_l_mean"] = sum(self.chunk_rouge_l) / len(self.chunk_rouge_l)
            out["case_study_identical_chunks"], out["case_study_chunks"] = self.identical_chunks
        if base > 0:
            out["docs_per_min_gain"] = opt / base
        return out

    def table(self) -> pd.DataFrame:
        import pandas as pd

        rows = [{"chapter": c.number, "tokens": c.tokens, "chunks": b.chunks, "baseline (s)": b.seconds,
                 "optimized (s)": o.seconds, "ROUGE-L vs baseline": r, "optimized summary": o.text}
                for c, b, o, r in zip(self.chapters, self.baseline, self.optimized, self.rouge_l)]
        return pd.DataFrame(rows)

    def text(self) -> str:
        s = self.summary()
        gain = f"{s['docs_per_min_gain']:.2f}x" if "docs_per_min_gain" in s else "no gain figure"
        gate = "passes" if s["case_study_similarity_gate_passed"] else "fails"
        return (f"Case study (C20): {s['case_study_chapters']} whole chapters ({s['case_study_tokens']} tokens) summarized by "
                f"map-reduce: {s['baseline_docs_per_min']:.2f} documents/min on the baseline, "
                f"{s['optimized_docs_per_min']:.2f} on the optimized stack ({gain}; one pass, no interval). The optimized "
                f"summaries score ROUGE-L {s['case_study_rouge_l_mean']:.2f} against the baseline's: a similarity, not a "
                f"quality score; it {gate} the gate at {self.min_rouge_l:g}." + self._where_paths_part(s))

    @staticmethod
    def _where_paths_part(s: dict[str, Any]) -> str:
        if "case_study_chunk_rouge_l_mean" not in s:
            return ""
        return (f" The map step's chunk summaries score {s['case_study_chunk_rouge_l_mean']:.2f} "
                f"({s['case_study_identical_chunks']} of {s['case_study_chunks']} word for word the baseline's); the "
                f"reduce step reads them, so a difference there carries into the final summary "
                f"(bench/case_study_similarity.py serves each optimization alone to find which one moves them).")


def summarize_on(cfg: Config, overrides: dict[str, Any], chapters: Sequence[Chapter], tokenizer) -> tuple[Summary, ...]:
    """`chapters` map-reduced, one after another, on a fresh server with `overrides` (dotted params keys)."""
    from perfkit import casestudy

    study = cfg.optimized.case_study
    with launch(cfg, overrides=overrides, probe_cold_start=False, timeout_s=cfg.optimized.launch_timeout_s) as handle:
        return tuple(
            casestudy.summarize_chapter(handle.base_url, cfg.model.name, ch, tokenizer, chunk_tokens=study.chunk_tokens,
                                        chunk_summary_tokens=study.chunk_summary_tokens, summary_tokens=study.summary_tokens)
            for ch in chapters)


def case_study(cfg: Config, stacks: dict[str, dict[str, Any]]) -> CaseStudy | None:
    """Each stack's fresh server summarizes the same chapters by map-reduce (C20); None when `chapters` is 0."""
    from perfkit import casestudy
    from perfkit.models import load_tokenizer

    study = cfg.optimized.case_study
    if study.chapters == 0:
        return None
    tokenizer = load_tokenizer(cfg.resolve(cfg.model.path))
    chapters = tuple(casestudy.chapters(cfg.corpus_dir, tokenizer, study.chapters))
    done = {name: summarize_on(cfg, overrides, chapters, tokenizer) for name, overrides in stacks.items()}
    return CaseStudy.compare(chapters, done["baseline"], done["optimized"], study.min_rouge_l)
