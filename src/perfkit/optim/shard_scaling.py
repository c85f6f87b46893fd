"""A scaling model for tensor parallelism: fitted from measured pieces, checked where it can be.

One decode step on N devices:

    t(N) = serial + sharded x share(N) + calls x (latency + wire bytes / bandwidth)

- *serial*: what every rank does whole (a replicated lm_head, the embedding lookup, sampling, Python);
- *sharded*: the decoder layers' compute (and a vocabulary-split head's), of which the busiest rank
  does `share(N)`: 1/N for an even split, more with uneven KV heads (6 of 9 query heads at N = 2);
- two all-reduces per layer of `hidden x rows x dtype` bytes; a ring all-reduce puts 2(N-1)/N of
  them on each rank's link.

Here the pieces come from the 1-rank run (forward hooks time the decoder layers and the head within
each step) and from an all-reduce micro-benchmark at N = 2 (latency and bandwidth by least
squares), and the model's N = 2 step is compared with the measured one, but only when the measured
step times are steady (CV below `sharding.max_step_cv`); otherwise "too noisy to check".

For another device a CPU's compute says nothing: decode at batch 1 reads every weight once per
step, so there the sharded and serial parts are weight bytes / memory bandwidth (an upper bound on
speed: real kernels reach 60-80% of it), and the links are parameters (NVLink, PCIe, 25 GbE). This
gives the prediction for the seed article's setting (a 13B model on 4 GPUs, claim C5) and, for
scale, gpt-fast's published decode scaling (LLaMA-2-7B, batch 1, A100s), which t(N) = 2.11 ms +
7.42 ms / N fits within 2%. It is a model, and the report labels it so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# gpt-fast (pytorch-labs), README: LLaMA-2-7B, batch 1, tensor parallel on A100s, tokens/s by GPU count.
GPT_FAST_TOK_S = {1: 105.0, 2: 169.0, 4: 254.0, 8: 328.0}
LLAMA2_7B = {"name": "llama-2-7b", "params_b": 6.74, "layers": 32, "hidden": 4096, "vocab": 32000, "dtype_bytes": 2}


@dataclass(frozen=True)
class Link:
    """An interconnect: a fixed cost per all-reduce and a bandwidth for its bytes."""

    name: str
    latency_s: float
    bytes_per_s: float

    def allreduce_s(self, nbytes: float, n: int) -> float:
        """One ring all-reduce of `nbytes` over `n` ranks (nothing at n = 1)."""
        if n <= 1:
            return 0.0
        return self.latency_s + 2 * (n - 1) / n * nbytes / self.bytes_per_s


def fit_link(rows: list[dict[str, float]], name: str = "measured", n: int = 2) -> Link:
    """Latency and bandwidth from (bytes, seconds) all-reduce timings at `n` ranks, by least squares."""
    x = np.array([2 * (n - 1) / n * r["bytes"] for r in rows])
    y = np.array([r["seconds"] for r in rows])
    slope, intercept = np.polyfit(x, y, 1) if len(rows) > 1 else (0.0, float(y[0]))
    return Link(name, max(float(intercept), 0.0), 1.0 / slope if slope > 0 else float("inf"))


@dataclass(frozen=True)
class StepModel:
    """The pieces of one decode step, in seconds, and the collectives that sharding adds per step."""

    serial_s: float
    sharded_s: float
    calls: int  # all-reduces per step once sharded
    bytes_per_call: float

    def step_s(self, n: int, link: Link, share: float | None = None) -> float:
        """Predicted seconds per decode step on `n` ranks; `share`: the busiest rank's part of the sharded work."""
        part = share if share is not None else 1.0 / n
        return self.serial_s + self.sharded_s * part + self.calls * link.allreduce_s(self.bytes_per_call, n)

    def speedup(self, n: int, link: Link, share: float | None = None) -> float:
        return self.step_s(1, link) / self.step_s(n, link, share)


def measured_pieces(
    step_s: float, layers_s: float, head_s: float, *, layers: int, hidden: int, rows: int, dtype_bytes: int, vocab_split: bool
) -> StepModel:
    """The 1-rank run's step split into serial and sharded parts (a vocabulary-split head is sharded)."""
    sharded = layers_s + (head_s if vocab_split else 0.0)
    return StepModel(
        serial_s=max(step_s - sharded, 0.0),
        sharded_s=sharded,
        calls=2 * layers + (1 if vocab_split else 0),
        bytes_per_call=hidden * rows * dtype_bytes,
    )


def weight_pieces(
    *, params_b: float, layers: int, hidden: int, vocab: int, dtype_bytes: int, bytes_per_s: float, tied: bool = False
) -> StepModel:
    """A device's decode step at batch 1 from weight bytes / memory bandwidth (lm_head replicated)."""
    head = vocab * hidden * dtype_bytes
    embed_tables = head if tied else 2 * head  # the embedding lookup reads one row, not its table
    layer_bytes = params_b * 1e9 * dtype_bytes - embed_tables
    return StepModel(
        serial_s=head / bytes_per_s, sharded_s=layer_bytes / bytes_per_s, calls=2 * layers, bytes_per_call=hidden * dtype_bytes
    )


def fit_inverse(tok_s: dict[int, float]) -> tuple[float, float, float]:
    """t(N) = a + b / N fitted to published tokens/s: (a seconds, b seconds, largest relative error)."""
    n = np.array(sorted(tok_s), dtype=float)
    t = np.array([1.0 / tok_s[int(k)] for k in n])
    b, a = np.polyfit(1.0 / n, t, 1)
    error = float(np.max(np.abs((a + b / n) - t) / t))
    return float(a), float(b), error


@dataclass(frozen=True)
class Check:
    """The model's N-rank step against the measured one, or why it was not compared."""

    n: int
    predicted_s: float
    measured_s: float
    step_cv: float
    max_cv: float
    threads: int = 0  # threads over all ranks, against the machine's cores: the model gives each rank its own
    cores: int = 0

    @property
    def oversubscribed(self) -> bool:
        """More threads than cores: ranks take turns on a core, which the model (one core set per rank) ignores."""
        return self.cores > 0 and self.threads > self.cores

    @property
    def checked(self) -> bool:
        return self.step_cv < self.max_cv and not self.oversubscribed

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted_s - self.measured_s) / self.measured_s

    @property
    def status(self) -> str:
        if self.oversubscribed:
            return f"{self.threads} threads over {self.cores} cores take turns, which the model (each rank its own cores) does not describe"
        if not self.checked:
            return f"too noisy to check (step-time CV {self.step_cv:.0%} >= {self.max_cv:.0%})"
        return "within 20%" if abs(self.error_pct) <= 20 else "outside 20%"
