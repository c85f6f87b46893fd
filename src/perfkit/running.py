"""Rows that join and leave between decode steps, over a dynamic KV cache; and the prefill every batch shares.

`prefill` runs newcomers' prompts (left-padded to a common width, each after the longest prefix a `PrefixStore` holds
of it) through the model and returns their first tokens with a `DynamicCache` holding their keys and values.
`RunningBatch` stacks that cache under the running rows' (`perfkit.slots.SlotBatch` copies it into preallocated slots
instead). A row that finishes leaves its keys and values in the store, for the next turn of its conversation.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from perfkit.prefix_cache import KV, PrefixStore, past_cache

if TYPE_CHECKING:
    from perfkit.engine import Engine

Request = tuple[Hashable, Sequence[int], int, bool]  # key, prompt ids, max_new_tokens, stop_at_eos


@dataclass(frozen=True)
class RowToken:
    """One row's new token from a batch's call; `finish` is set on the row's last token."""

    key: Hashable
    token: int
    finish: str | None  # "stop" (its end-of-sequence token) | "length" (max_new_tokens reached) | None


@dataclass
class Row:
    key: Hashable
    max_new_tokens: int
    stop_at_eos: bool
    prompt_tokens: int = 0
    ids: list[int] = field(default_factory=list)  # the prompt, then every token produced
    produced: int = 0


@dataclass(frozen=True)
class Prefilled:
    """Newcomers after their prefill: a `DynamicCache` whose row r holds request r's keys in the columns where `mask`
    is 1 (a reused prefix and the rest of the prompt, each left-padded), the position of each row's next input token
    (its prompt's length), and each row's first token."""

    rows: list[Row]
    cache: Any
    mask: torch.Tensor  # (rows, columns): 1 where a row has a token
    next_positions: torch.Tensor  # (rows, 1)
    first: torch.Tensor  # (rows,)


@torch.inference_mode()
def prefill(engine: Engine, requests: Sequence[Request], store: PrefixStore | None = None) -> Prefilled:
    """Run `requests`' prompts through the model. With a `store`, each prompt's longest stored prefix is reused and
    only the rest is run: row r's input is its suffix, left-padded to the longest suffix, after its reused keys,
    left-padded to the longest reused prefix (the mask hides both paddings; positions are each row's own)."""
    if not requests or any(len(p) == 0 or n < 1 for _, p, n, _ in requests):
        raise ValueError("every prompt needs at least one token and max_new_tokens >= 1")
    rows = [Row(key, n, stop, len(prompt), list(prompt)) for key, prompt, n, stop in requests]
    found = [store.match(prompt) for _, prompt, _, _ in requests] if store is not None else [(0, None)] * len(requests)
    reused = [n for n, _ in found]
    past = max(reused)
    width = max(len(p) - n for (_, p, _, _), n in zip(requests, reused))
    ids = torch.full((len(requests), width), engine.pad_id, dtype=torch.long)
    mask = torch.zeros((len(requests), past + width), dtype=torch.long)
    positions = torch.zeros((len(requests), width), dtype=torch.long)
    for row, ((_, prompt, _, _), n) in enumerate(zip(requests, reused)):
        suffix = list(prompt[n:])
        ids[row, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
        positions[row, width - len(suffix) :] = torch.arange(n, len(prompt))
        mask[row, past - n : past] = 1
        mask[row, past + width - len(suffix) :] = 1
    ids, mask, positions = ids.to(engine.device), mask.to(engine.device), positions.to(engine.device)
    cache = past_cache(engine.model, [kv for _, kv in found], reused) if past else None
    # logits_to_keep=1: prefill needs only the last position's logits, not prompt x vocabulary.
    out = engine.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
    first = engine.pick(out.logits[:, -1, :], [r.stop_at_eos for r in rows])
    lengths = torch.tensor([[len(p)] for _, p, _, _ in requests], dtype=torch.long, device=engine.device)
    return Prefilled(rows, out.cache, mask, lengths, first)


class Batch:
    """What every batch shares: its rows, the join that prefills newcomers, and retiring rows as they finish.
    A batch says how newcomers' keys and values join its own (`_admit`) and how a row leaves them (`drop`)."""

    def __init__(self, engine: Engine, reuse_prefixes: bool = True) -> None:
        self.engine = engine
        self.rows: list[Row] = []
        self.reuse_prefixes = reuse_prefixes

    @property
    def store(self) -> PrefixStore | None:
        """Where prompts find reusable prefixes and finished rows leave theirs: the engine's, read at each use."""
        return self.engine.prefix_store if self.reuse_prefixes else None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def remaining_tokens(self) -> list[int]:
        """Tokens each row may still produce (at most: a row that stops at end-of-sequence may end sooner)."""
        return [r.max_new_tokens - r.produced for r in self.rows]

    @torch.inference_mode()
    def join(self, requests: Sequence[Request]) -> list[RowToken]:
        """Prefill `(key, prompt_ids, max_new_tokens, stop_at_eos)` requests and add them; returns their first tokens."""
        if not requests:
            return []
        new = prefill(self.engine, requests, self.store)
        self._admit(new)
        self.rows += new.rows
        return self._record(new.rows, new.first.tolist())

    def step(self) -> list[RowToken]:
        raise NotImplementedError

    def drop(self, keys: set[Hashable]) -> None:
        raise NotImplementedError

    def _admit(self, new: Prefilled) -> None:
        """Add the newcomers' keys and values (their rows are appended to `rows` after this)."""
        raise NotImplementedError

    def _row_kv(self, index: int) -> KV:
        """A copy of row `index`'s keys and values, in position order: (1, heads, tokens fed, head dim) per layer."""
        raise NotImplementedError

    def _record(self, rows: list[Row], tokens: list[int]) -> list[RowToken]:
        """Count each row's new token, decide whether it finished, and retire the finished rows."""
        out, finished = [], set()
        for row, token in zip(rows, tokens):
            row.produced += 1
            finish = None
            if row.stop_at_eos and token in self.engine.eos_ids:
                finish = "stop"
            elif row.produced == row.max_new_tokens:
                finish = "length"
            row.ids.append(token)
            if finish is not None:
                finished.add(row.key)
            out.append(RowToken(row.key, token, finish))
        store = self.store
        if store is not None:  # a finished row's prompt and answer, for the next turn of its conversation
            for i, row in enumerate(self.rows):
                if row.key in finished:
                    store.put(row.ids[:-1], self._row_kv(i))  # the last token was never fed: it has no keys
        self.drop(finished)
        return out


class RunningBatch(Batch):
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

    def __init__(self, engine: Engine, reuse_prefixes: bool = True) -> None:
        super().__init__(engine, reuse_prefixes)
        self._cache: Any = None
        self._mask = torch.zeros((0, 0), dtype=torch.long)  # (rows, columns): 1 where a row has a token
        self._positions = torch.zeros((0, 1), dtype=torch.long)  # the position of each row's next input token
        self._last = torch.zeros((0, 1), dtype=torch.long)  # each row's newest token: the next step's input

    def _admit(self, new: Prefilled) -> None:
        self._merge(new.cache, new.mask, new.next_positions, new.first.unsqueeze(-1))

    def _row_kv(self, index: int) -> KV:
        used = self._mask[index].bool()
        return tuple((layer.keys[index : index + 1, :, used], layer.values[index : index + 1, :, used]) for layer in self._cache.layers)

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
