"""The optimized stage: the stack chosen from the upstream stages' measurements against the baseline, same load.

1. **Choice** (`choose.py`): each optimization picked by a rule from the upstream stages' saved
   results (typed facts, `perfkit.upstream`), with its measured reason; stages that have not run, and choices that
   do nothing on this load (transport, codecs, an answer cache on distinct prompts), are listed.
2. **Same load**: the baseline (sequential, fp32) and the optimized stack, each a fresh server per
   round under the baseline's exact closed-loop load (same prompts and users), `measure.rounds`
   interleaved rounds (baseline, optimized, baseline, ...) of at least `min_requests` measured
   requests each (`sequential_requests` on an arm that serves one request at a time). Every
   relative figure (latency reduction, throughput gain, memory, monthly cost at `cost.target_qps`,
   QPS per $) comes with a 95% interval from the per-round paired ratios; the report judges C10–C15
   on those.
3. **Ablation**, in the same rounds: every set of optimizations the ablation needs is an arm of the
   interleaved rounds (with two optimizations a 2 x 2 factorial: baseline, each alone, both), so each
   step (one added at a time in the chosen order; each left out of the full stack once) has its own
   rounds and interval, and the interaction (the full gain over the product of the single gains)
   says whether they compose.
4. **Cold starts** (C13, C19, `cold_starts.py`): the baseline, the baseline without warm-up, the
   optimized stack (with its cold-start lever, `serving.prepared_checkpoint`, where it changes the
   precision) and the same stack without its lever, each started `cold_starts` times, rounds interleaved and shuffled, every start split
   into imports, model load, warm-up and first answer.
5. **Case study** (C20, `perfkit.casestudy`): a document-summary service: documents sent at once to
   each stack's server (the arm's own, right after its load), in interleaved rounds; documents per minute with intervals, and ROUGE-L
   of each stack's summaries against the baseline's as similarity (not quality) with a gate at
   `min_rouge_l`, and the best stack that passes it.

Monthly cost: instances needed for `cost.target_qps` (ceil(target / measured req/s), the closed-loop
rate at the article's 10 users standing in for a capacity at an SLO, which this stage does not
search) times `usd_per_hour x hours_per_month`.
"""

from __future__ import annotations

from pydantic import Field

from perfkit.config import Section
from perfkit.service_sections import SchedulerMode, ServingDtype
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec


class CaseStudyConfig(Section):
    """The document-summary case study (C20): documents by map-reduce, sent at once to each stack, in rounds."""

    documents: int = Field(
        8,
        ge=0,
        le=24,
        description="documents sent at once to the optimized stack (the shortest chapters of the held-out novel); 0 skips the case study",
    )
    baseline_documents: int = Field(
        1, ge=1, le=24, description="of them a round, the next ones each round, sent to the sequential baseline (it cannot gain from more)"
    )
    document_tokens: int = Field(512, ge=0, le=100_000, description="each document: the chapter's first tokens (0: whole)")
    chunk_tokens: int = Field(256, ge=16, le=4096, description="tokens per map chunk")
    chunk_summary_tokens: int = Field(48, ge=1, le=512, description="output tokens per chunk summary")
    summary_tokens: int = Field(96, ge=1, le=512, description="output tokens of the chapter's summary (the reduce step)")
    min_rouge_l: float = Field(0.5, ge=0, le=1, description="similarity gate: mean ROUGE-L of optimized vs baseline summaries")


class PinnedStack(Section):
    """The optimized stack's batching and precision, fixed by params rather than chosen from measurements."""

    scheduler: SchedulerMode = "dynamic"
    max_batch_size: int = Field(8, ge=1, le=256)
    dtype: ServingDtype = "bfloat16"


class OptimizedConfig(Section):
    """The optimized stack against the baseline under the same load, with an ablation."""

    min_requests: int = Field(
        40,
        ge=1,
        le=100_000,
        description="measured requests per batching arm and round, at least (load.requests if "
        "larger); a sequential arm serves sequential_requests",
    )
    ablation: bool = Field(True, description="serve each optimization alone (and each left out) as arms of the rounds")
    sequential_requests: int = Field(
        20,
        ge=1,
        le=100_000,
        description="measured requests per round of an arm that serves one request at a time (the "
        "baseline's tokens/s varied within 1% between rounds; its latency is steady too)",
    )
    cold_starts: int = Field(
        5,
        ge=0,
        le=100,
        description="fresh servers per variant of the cold-start block (C13, C19), one per round, order shuffled; 0 skips it",
    )
    min_accuracy_kept_pct: float = Field(89.0, ge=0, le=100, description="distillation: the student's accuracy kept, at least")
    launch_timeout_s: float = Field(180.0, gt=0, le=3600)
    pinned: PinnedStack | None = Field(
        None,
        description="serve this stack instead of choosing one from the upstream stages (random weights: a quality "
        "gate on them is arbitrary)",
    )
    case_study: CaseStudyConfig = CaseStudyConfig()


UPSTREAM = ("baseline", "batching", "quantization", "cache", "distillation", "transport", "compression")

STAGE = StageSpec(
    name="optimized",
    budget_s=1020,
    title="Optimized stack against the baseline: same load, each optimization's share, cost",
    description="The stack picked by rules from the upstream stages' measurements; baseline and optimized in interleaved "
    "rounds under the baseline's load (latency, TTFT, TPOT, req/s, tok/s, peak memory, cold start, cost); an ablation.",
    run="perfkit.stages.optimized.experiment:run",
    section=OptimizedConfig,
    reads=("model", "hardware", "workload", "measure", "serving", "load", "cost"),
    data=MEASURED_DATA,
    plots=(Plot("rounds", "round", "throughput_tok_s"), Plot("ablation", "step", "throughput_tok_s")),
    upstream=UPSTREAM,
    upstream_file="result.json",
    order=800,
)
