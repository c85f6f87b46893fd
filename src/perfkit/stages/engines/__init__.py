"""The engines stage: does each effect measured on perfkit's reference engine carry over to a second real engine?

A user deploys vLLM, TGI, llama.cpp or Ollama, not perfkit's engine, so every effect the suite
measures is measured again here on llama.cpp, the same model, the same machine, interleaved in
rounds, and each effect's ratio is set beside the reference engine's with its interval:

- precision (offline): F32, F16, Q8_0, Q4_0 and Q4_1 files written by llama.cpp's own
  `llama-quantize` from the F32 GGUF; speed from `llama-bench` at the quantization stage's request
  shape, quality from `llama-perplexity --kl-divergence` against the F32 model's log-probabilities
  ("same top p" is top-1 agreement, the quantization stage's gate), beside the quantization
  stage's fp32 / bf16 / int8 / int4 figures for the reference engine (read from its saved result);
- batching (served): llama-server with 1 slot against 8 parallel slots under the baseline's
  closed-loop load, beside the batching stage's continuous batching at 8 over its sequential server
  (the same load, paired by round there: perfkit's side is not measured a second time);
- prefix reuse (served): llama-server's prompt cache (`cache_prompt`) against perfkit's prefix
  store, time to first token with and without a shared system turn already cached.

An effect transfers when both engines' intervals lie on the same side of 1; the page says whether
the intervals overlap or by how much the ratios differ. The default model's "fp32" checkpoint is
the shipped Q4_1 GGUF dequantized, so every quality loss here is measured against a model already
rounded to 4 bits once. Without `make llama-server` the stage reports "not built" with that
command, and nothing else in the pipeline changes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from perfkit.config import Section
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec

LlamaPrecision = Literal["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "Q4_K_M", "Q4_K_S"]


class EnginesConfig(Section):
    """Each effect on perfkit's reference engine and on llama.cpp, interleaved in rounds, and whether it transfers."""

    llama_cpp_bin: str = Field(".cache/llama.cpp/build/bin", description="where `make llama-server` builds llama.cpp's tools")
    f32_gguf: str = Field(".cache/llama.cpp/smollm2-135m-instruct-f32.gguf", description="the F32 GGUF `make llama-server` converts")
    gguf_dir: str = Field(".cache/llama.cpp/quantized", description="where llama-quantize's files are kept between runs")
    precisions: tuple[LlamaPrecision, ...] = Field(("F32", "F16", "Q8_0", "Q4_0", "Q4_1"), description="llama-quantize types")
    bench_repetitions: int = Field(2, ge=1, le=50, description="llama-bench repetitions per file and round")
    perplexity_ctx: int = Field(1024, ge=64, le=8192, description="llama-perplexity context (the second half of each is scored)")
    perplexity_chunks: int = Field(4, ge=1, le=1000, description="contexts of held-out text scored per file")
    slots: int = Field(8, ge=2, le=64, description="llama-server's slots in the batched arm (the batching stage's width: 8)")
    prefix_lengths: tuple[int, ...] = Field((256, 1024), description="shared system-turn lengths, templated tokens")
    prefix_pairs: int = Field(4, ge=1, le=1000, description="requests without and with a cached prefix, interleaved, per length")
    timeout_s: float = Field(600.0, gt=0, le=7200, description="per llama.cpp tool call")
    launch_timeout_s: float = Field(180.0, gt=0, le=3600)


STAGE = StageSpec(
    name="engines",
    budget_s=300,
    title="Engines: does each effect carry over from perfkit's engine to llama.cpp?",
    description="Precision (llama-quantize files, llama-bench speed, llama-perplexity KL divergence and top-1 agreement) beside "
    "the quantization stage's figures; batching (1 vs 8 llama-server slots beside the batching stage's sequential "
    "vs continuous-8) and prefix reuse (cache_prompt vs perfkit's prefix store) served, interleaved in rounds; "
    "per effect the ratio on each engine and whether it transfers. Needs `make llama-server`; reports 'not built' otherwise.",
    run="perfkit.stages.engines.experiment:run",
    section=EnginesConfig,
    reads=("model", "hardware", "workload", "serving", "load", "measure", "quantization"),
    data=MEASURED_DATA,
    plots=(Plot("effects", "effect", "ratio"),),
    upstream=("quantization", "batching"),
    upstream_file="result.json",
    order=95,
)
