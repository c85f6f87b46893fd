"""Generation with per-token timing: one request, a left-padded batch, or rows that come and go.

A generation has two phases. *Prefill* runs the whole prompt through the model in one forward
pass and yields the first output token: its duration is the time to first token (TTFT), which
grows with prompt length. *Decode* then produces one token per forward pass, reusing the key/value
cache: the time per output token (TPOT) is (E2E - TTFT) / (output tokens - 1). Decode reads every
weight once per step whatever the batch size, so batching rows raises tokens/s until compute,
not memory bandwidth, is the limit.

The loop here is written out (greedy, KV cache) rather than delegated to `model.generate`, so
that every token's arrival is timed with the same clock (`hardware.now`, which synchronizes CUDA),
so that servers can stream tokens as they come, and so that a server can add a request to a
running batch between two decode steps (`Engine.new_batch`: `perfkit.running.RunningBatch` over transformers'
dynamic KV cache, or `perfkit.slots.SlotBatch` over preallocated slots, whose decode step `torch.compile` can
capture). Speed comparisons use a fixed output length: `stop_at_eos=False` masks the end-of-sequence token, as
`min_new_tokens` does in transformers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from perfkit.hardware import now
from perfkit.prefix_cache import PrefixStore
from perfkit.prepack import prepack_linears
from perfkit.running import Batch, RunningBatch
from perfkit.slots import SlotBatch, compiled_step

KvCache = Literal["dynamic", "slots"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"]


@dataclass
class Timing:
    """One request's clock: seconds from its start to the first token, and to each token."""

    prompt_tokens: int
    token_times_s: list[float] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return len(self.token_times_s)

    @property
    def ttft_s(self) -> float:
        return self.token_times_s[0]

    @property
    def e2e_s(self) -> float:
        return self.token_times_s[-1]

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (0 when only one token was produced)."""
        n = self.output_tokens
        return (self.e2e_s - self.ttft_s) / (n - 1) if n > 1 else 0.0


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str  # "length" (max_new_tokens reached) or "stop" (end of sequence)
    timing: Timing


@dataclass
class StepTokens:
    """What one decode step produced: a token per still-running row (None for finished rows)."""

    tokens: list[int | None]
    time_s: float


class Engine:
    """Greedy generation over a causal LM, timed per token. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        device: torch.device | str,
        kv_cache: KvCache = "dynamic",
        compile: CompileMode = "off",
        prepack: bool = False,
    ) -> None:
        """`prepack`: on a CPU, with the step not compiled (compiling prepacks by itself), the model's linear weights are
        reordered for oneDNN once, in place (`perfkit.prepack`): the model serves inference only from then on."""
        if compile != "off" and kv_cache != "slots":
            raise ValueError(f"compile={compile!r} needs kv_cache='slots' (a dynamic cache changes shape every step)")
        self.model = model
        self.prepacked = False
        if prepack and compile == "off" and torch.device(device).type == "cpu":
            self.prepacked = prepack_linears(model) > 0
        self.kv_cache, self.compile = kv_cache, compile
        self._step = compiled_step(compile, device) if kv_cache == "slots" else None
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            self.eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)
        self.prefix_store: PrefixStore | None = None  # set to reuse computed prefixes' KV (perfkit.prefix_cache)

    def new_batch(self, rows: int = 1, reuse_prefixes: bool = True) -> Batch:
        """An empty batch that rows join and leave between steps, over this engine's KV cache (`rows`: the most it
        will hold at once, which slots are allocated for; more grow them). With `reuse_prefixes` and a
        `prefix_store`, prompts reuse stored prefixes and finished rows are stored (off: a prefill priced whole)."""
        if self._step is None:
            return RunningBatch(self, reuse_prefixes)
        return SlotBatch(self, rows, self._step, compiled=self.compile != "off", reuse_prefixes=reuse_prefixes)

    def warm_compiled(self, prompt: Sequence[int]) -> None:
        """Compile the decode step (one graph serves every width), so that no request waits for it; nothing to do when
        the step is not compiled."""
        if self.compile != "off":
            self.generate_batch([prompt, prompt], 3, stop_at_eos=False)

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def pick(self, logits: torch.Tensor, stop_at_eos: Sequence[bool]) -> torch.Tensor:
        """Greedy choice per row; rows that do not stop at end-of-sequence never get it (fixed output length)."""
        fixed = [not s for s in stop_at_eos]
        if any(fixed) and self.eos_ids:
            logits = logits.clone()
            eos = torch.tensor(sorted(self.eos_ids), device=logits.device)
            rows = torch.tensor(fixed, device=logits.device).nonzero().squeeze(-1)
            logits[rows.unsqueeze(-1), eos] = float("-inf")
        return logits.argmax(dim=-1)

    def steps(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_at_eos: bool = True) -> Iterator[StepTokens]:
        """Yield each step's new tokens for a left-padded batch until every row is done.

        Row r is done after `max_new_tokens` tokens or, with `stop_at_eos`, after its end-of-sequence
        token (which is yielded, so callers can tell "stop" from "length"); a done row leaves the
        batch. `time_s` is seconds since the call, read after the step's tokens reached the host.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        start = now(self.device)
        batch = self.new_batch(len(prompts))
        produced = batch.join([(row, prompt, max_new_tokens, stop_at_eos) for row, prompt in enumerate(prompts)])
        while True:
            tokens: list[int | None] = [None] * len(prompts)
            for t in produced:
                tokens[t.key] = t.token  # type: ignore[index]
            yield StepTokens(tokens, now(self.device) - start)
            if not batch:
                return
            produced = batch.step()

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_at_eos: bool = True) -> list[Generation]:
        """Run prompts as one batch; each row is timed from the batch's start."""
        timings = [Timing(prompt_tokens=len(p)) for p in prompts]
        outputs: list[list[int]] = [[] for _ in prompts]
        for step in self.steps(prompts, max_new_tokens, stop_at_eos):
            for row, token in enumerate(step.tokens):
                if token is not None:
                    outputs[row].append(token)
                    timings[row].token_times_s.append(step.time_s)
        results = []
        for ids, timing in zip(outputs, timings):
            stopped = stop_at_eos and bool(ids) and ids[-1] in self.eos_ids
            results.append(Generation(ids, self.decode(ids), "stop" if stopped else "length", timing))
        return results

    def generate(self, prompt: Sequence[int], max_new_tokens: int, stop_at_eos: bool = True) -> Generation:
        """One request (with a `prefix_store`: over its longest stored prefix, and stored when done)."""
        return self.generate_batch([prompt], max_new_tokens, stop_at_eos)[0]

    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Next-token logits at every position of one sequence (float32, on the host)."""
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        return self.model(input_ids=x, use_cache=False).logits[0].float().cpu()
