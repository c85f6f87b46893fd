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
running batch between two decode steps (`RunningBatch`). Speed comparisons use a fixed output
length: `stop_at_eos=False` masks the end-of-sequence token, as `min_new_tokens` does in transformers.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from perfkit.hardware import now
from perfkit.prefix_cache import PrefixStore, shared_cache, stored_prefix


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


@dataclass(frozen=True)
class RowToken:
    """One row's new token from a `RunningBatch` call; `finish` is set on the row's last token."""

    key: Hashable
    token: int
    finish: str | None  # "stop" (its end-of-sequence token) | "length" (max_new_tokens reached) | None


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
        self.prefix_store: PrefixStore | None = None  # set to reuse shared prompt prefixes' KV (perfkit.prefix_cache)

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

    def steps(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_at_eos: bool = True, prefix_len: int = 0
    ) -> Iterator[StepTokens]:
        """Yield each step's new tokens for a left-padded batch until every row is done.

        Row r is done after `max_new_tokens` tokens or, with `stop_at_eos`, after its end-of-sequence
        token (which is yielded, so callers can tell "stop" from "length"); a done row leaves the
        batch. `time_s` is seconds since the call, read after the step's tokens reached the host.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        start = now(self.device)
        batch = RunningBatch(self)
        produced = batch.join(
            [(row, prompt, max_new_tokens, stop_at_eos) for row, prompt in enumerate(prompts)], [prefix_len] * len(prompts)
        )
        while True:
            tokens: list[int | None] = [None] * len(prompts)
            for t in produced:
                tokens[t.key] = t.token  # type: ignore[index]
            yield StepTokens(tokens, now(self.device) - start)
            if not batch:
                return
            produced = batch.step()

    def generate_batch(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_at_eos: bool = True, prefix_len: int = 0
    ) -> list[Generation]:
        """Run prompts as one batch; each row is timed from the batch's start."""
        timings = [Timing(prompt_tokens=len(p)) for p in prompts]
        outputs: list[list[int]] = [[] for _ in prompts]
        for step in self.steps(prompts, max_new_tokens, stop_at_eos, prefix_len):
            for row, token in enumerate(step.tokens):
                if token is not None:
                    outputs[row].append(token)
                    timings[row].token_times_s.append(step.time_s)
        results = []
        for ids, timing in zip(outputs, timings):
            stopped = stop_at_eos and bool(ids) and ids[-1] in self.eos_ids
            results.append(Generation(ids, self.decode(ids), "stop" if stopped else "length", timing))
        return results

    def generate(self, prompt: Sequence[int], max_new_tokens: int, stop_at_eos: bool = True, prefix_len: int = 0) -> Generation:
        """One request; with `prefix_len` and a `prefix_store`, its first `prefix_len` tokens' KV is reused or stored."""
        return self.generate_batch([prompt], max_new_tokens, stop_at_eos, prefix_len)[0]

    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Next-token logits at every position of one sequence (float32, on the host)."""
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        return self.model(input_ids=x, use_cache=False).logits[0].float().cpu()


@dataclass
class _Row:
    key: Hashable
    max_new_tokens: int
    stop_at_eos: bool
    produced: int = 0


class RunningBatch:
    """Rows that join and leave between decode steps: iteration-level ("continuous") batching.

    All rows share one KV cache, left-padded to a common width: each row's keys sit at the right
    end, and the attention mask hides the columns to their left. Newcomers are prefilled together
    as their own left-padded batch; then whichever cache is narrower is padded on the left and the
    two are stacked along the batch dimension. A finished row's slice is dropped at once, and the
    columns no remaining row attends to are cut from the left, so the cache stays as wide as the
    longest live row. Each row carries its own position ids, so padding never shifts its rotary
    positions: a row gets the tokens it gets alone, up to float rounding in the batched matmuls.

    A fixed batch (`Engine.steps`) is the case where every row joins at once. Not thread-safe.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rows: list[_Row] = []
        self._cache: Any = None
        self._mask = torch.zeros((0, 0), dtype=torch.long)  # (rows, columns): 1 where a row has a token
        self._positions = torch.zeros((0, 1), dtype=torch.long)  # the position of each row's next input token
        self._last = torch.zeros((0, 1), dtype=torch.long)  # each row's newest token: the next step's input

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def remaining_tokens(self) -> list[int]:
        """Tokens each row may still produce (at most: a row that stops at end-of-sequence may end sooner)."""
        return [r.max_new_tokens - r.produced for r in self.rows]

    @torch.inference_mode()
    def join(self, requests: Sequence[tuple[Hashable, Sequence[int], int, bool]], prefix_lens: Sequence[int] = ()) -> list[RowToken]:
        """Prefill `(key, prompt_ids, max_new_tokens, stop_at_eos)` requests and add them; returns their first tokens.

        `prefix_lens`: per request, how many leading tokens are a prefix other requests share; a
        request that joins alone reuses that prefix's stored KV, or stores it (`Engine.prefix_store`).
        """
        if not requests:
            return []
        if any(len(p) == 0 or n < 1 for _, p, n, _ in requests):
            raise ValueError("every prompt needs at least one token and max_new_tokens >= 1")
        engine = self.engine
        store = engine.prefix_store
        if store is not None and len(requests) == 1 and prefix_lens and store.min_tokens <= prefix_lens[0] < len(requests[0][1]):
            return self._join_prefixed(requests[0], prefix_lens[0], store)
        width = max(len(p) for _, p, _, _ in requests)
        ids = torch.full((len(requests), width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, (_, prompt, _, _) in enumerate(requests):
            ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(engine.device), mask.to(engine.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = [_Row(key, n, stop) for key, _, n, stop in requests]
        # logits_to_keep=1: prefill needs only the last position's logits, not prompt x vocabulary.
        out = engine.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = engine.pick(out.logits[:, -1, :], [r.stop_at_eos for r in rows])
        self._merge(out.cache, mask, positions[:, -1:] + 1, first.unsqueeze(-1))
        self.rows += rows
        return self._record(rows, first.tolist())

    def _join_prefixed(self, request: tuple[Hashable, Sequence[int], int, bool], plen: int, store: PrefixStore) -> list[RowToken]:
        """One row: prefill only the suffix over the stored prefix KV, or the whole prompt and store its prefix."""
        key, prompt, n, stop = request
        engine = self.engine
        kv = store.get(prompt[:plen])
        cache = shared_cache(engine.model, kv) if kv is not None else None
        start = plen if cache is not None else 0
        ids = torch.tensor([list(prompt[start:])], dtype=torch.long, device=engine.device)
        mask = torch.ones((1, len(prompt)), dtype=torch.long, device=engine.device)
        positions = torch.arange(start, len(prompt), device=engine.device).unsqueeze(0)
        out = engine.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        if cache is None:
            store.put(prompt[:plen], stored_prefix(out.cache, plen))
        row = _Row(key, n, stop)
        first = engine.pick(out.logits[:, -1, :], [stop])
        self._merge(out.cache, mask, positions[:, -1:] + 1, first.unsqueeze(-1))
        self.rows.append(row)
        return self._record([row], first.tolist())

    @torch.inference_mode()
    def step(self) -> list[RowToken]:
        """One decode step: a new token for every row."""
        if not self.rows:
            return []
        self._mask = torch.cat([self._mask, torch.ones_like(self._last)], dim=-1)
        out = self.engine.model(
            input_ids=self._last,
            attention_mask=self._mask,
            position_ids=self._positions,
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._cache = out.cache
        chosen = self.engine.pick(out.logits[:, -1, :], [r.stop_at_eos for r in self.rows])
        self._positions = self._positions + 1
        self._last = chosen.unsqueeze(-1)
        return self._record(list(self.rows), chosen.tolist())

    def drop(self, keys: set[Hashable]) -> None:
        """Remove rows: finished ones (done by the batch itself) and those whose client went away."""
        keep = [i for i, r in enumerate(self.rows) if r.key not in keys]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        self._mask, self._positions, self._last = self._mask[index], self._positions[index], self._last[index]
        if not self.rows:
            self._cache = None
            self._mask = self._mask[:, :0]
            return
        self._cache.batch_select_indices(index)
        first_used = int(self._mask.any(dim=0).nonzero()[0])  # left-padding columns no remaining row attends to
        if first_used > 0:
            self._mask = self._mask[:, first_used:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first_used:], layer.values[:, :, first_used:]

    def _record(self, rows: list[_Row], tokens: list[int]) -> list[RowToken]:
        """Count each row's new token, decide whether it finished, and retire the finished rows."""
        out, finished = [], set()
        for row, token in zip(rows, tokens):
            row.produced += 1
            finish = None
            if row.stop_at_eos and token in self.engine.eos_ids:
                finish = "stop"
            elif row.produced == row.max_new_tokens:
                finish = "length"
            if finish is not None:
                finished.add(row.key)
            out.append(RowToken(row.key, token, finish))
        self.drop(finished)
        return out

    def _merge(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor, last: torch.Tensor) -> None:
        """Stack a newly prefilled batch under the running one, left-padding the narrower to the wider."""
        if not self.rows:
            self._cache, self._mask, self._positions, self._last = cache, mask, positions, last
            return
        width = max(self._mask.shape[1], mask.shape[1])

        def pad(t: torch.Tensor) -> torch.Tensor:
            """Left-pad the column axis (dim 2 of a (batch, heads, columns, dim) cache, dim 1 of a mask) to `width`."""
            missing = width - t.shape[-2 if t.dim() == 4 else -1]
            if missing == 0:
                return t
            return F.pad(t, (0, 0, missing, 0) if t.dim() == 4 else (missing, 0))

        for old, new in zip(self._cache.layers, cache.layers):
            old.keys = torch.cat([pad(old.keys), pad(new.keys)], dim=0)
            old.values = torch.cat([pad(old.values), pad(new.values)], dim=0)
        self._mask = torch.cat([pad(self._mask), pad(mask)], dim=0)
        self._positions = torch.cat([self._positions, positions], dim=0)
        self._last = torch.cat([self._last, last], dim=0)
