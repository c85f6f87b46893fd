"""Generation with per-token timing, one request or a left-padded batch.

A generation has two phases. *Prefill* runs the whole prompt through the model in one forward
pass and yields the first output token: its duration is the time to first token (TTFT), which
grows with prompt length. *Decode* then produces one token per forward pass, reusing the key/value
cache: the time per output token (TPOT) is (E2E - TTFT) / (output tokens - 1). Decode reads every
weight once per step whatever the batch size, so batching rows raises tokens/s until compute,
not memory bandwidth, is the limit.

The loop here is written out (greedy, KV cache) rather than delegated to `model.generate`, so
that every token's arrival is timed with the same clock (`hardware.now`, which synchronizes CUDA)
and so that servers can stream tokens as they come. Speed comparisons use a fixed output length:
`stop_at_eos=False` masks the end-of-sequence token, as `min_new_tokens` does in transformers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from perfkit.hardware import now


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

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: torch.device | str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            self.eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _pick(self, logits: torch.Tensor, stop_at_eos: bool) -> torch.Tensor:
        if not stop_at_eos and self.eos_ids:
            logits = logits.clone()
            logits[:, list(self.eos_ids)] = float("-inf")
        return logits.argmax(dim=-1)

    @torch.inference_mode()
    def steps(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_at_eos: bool = True
    ) -> Iterator[StepTokens]:
        """Yield each step's new tokens for a left-padded batch until every row is done.

        Row r is done after `max_new_tokens` tokens or, with `stop_at_eos`, after its end-of-sequence
        token (which is yielded, so callers can tell "stop" from "length"). `time_s` is seconds since
        the call, read after the step's tokens reached the host.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        start = now(self.device)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        done = [False] * len(prompts)
        cache = None
        for step in range(max_new_tokens):
            # logits_to_keep=1: prefill needs only the last position's logits, not prompt x vocabulary.
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
            )
            cache = out.cache
            next_ids = self._pick(out.logits[:, -1, :], stop_at_eos)
            host = next_ids.tolist()
            t = now(self.device) - start
            tokens: list[int | None] = []
            for row, token in enumerate(host):
                if done[row]:
                    tokens.append(None)
                    continue
                tokens.append(token)
                if (stop_at_eos and token in self.eos_ids) or step + 1 == max_new_tokens:
                    done[row] = True
            yield StepTokens(tokens, t)
            if all(done):
                return
            ids = next_ids.unsqueeze(-1)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=-1)
            positions = positions[:, -1:] + 1

    def generate_batch(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_at_eos: bool = True
    ) -> list[Generation]:
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
        return self.generate_batch([prompt], max_new_tokens, stop_at_eos)[0]

    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Next-token logits at every position of one sequence (float32, on the host)."""
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        return self.model(input_ids=x, use_cache=False).logits[0].float().cpu()
