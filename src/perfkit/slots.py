"""A slot KV cache owned by perfkit, and a decode step `torch.compile` can capture.

transformers' `StaticCache` fixes its batch size at the first update and writes one column for all rows, so it cannot
hold rows at different positions that join and leave between steps. Here every layer's keys and values are
preallocated as (slots, kv heads, context, head dim); the row in slot s keeps its token at position p in column p (no
left padding), so a decode step writes each row's new keys at its own column (a scatter) and attends over the first
`span` columns under a mask built from the rows' positions. The live rows always fill slots 0..w-1 (a leaving row's
slot takes the last row), so a step at width w reads the views `[:w]`: no tensor is reallocated while rows come and
go. Newcomers are prefilled eagerly (a prompt's length differs every time) and their keys copied into their slots.

The context doubles, up to the model's limit, when a row reaches the end of what is allocated (a copy, and under
compile new graphs); attention reads `span` columns (the longest live row), never the whole allocation. A compiled
step is one graph for every width and span (both symbolic sizes); torch specializes a size of 1, so one row runs
as two (`compiled_width`), the second an idle slot.

`SlotBatch` has `RunningBatch`'s interface; `Engine.new_batch` returns it when the engine's `kv_cache` is "slots",
with the decode step compiled in `Engine.compile` mode unless that is "off".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from perfkit.prefix_cache import KV
from perfkit.running import Batch, Prefilled, RowToken

if TYPE_CHECKING:
    from perfkit.engine import Engine

MIN_CONTEXT = 256  # columns a slot starts with


class SlotLayer(CacheLayerMixin):
    """One decoder layer's keys and values, (slots, kv heads, context, head dim), written in place."""

    is_compileable = True

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, owner: SlotCache) -> None:
        super().__init__()
        self.keys, self.values, self.owner = keys, values, owner
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocated up front by `SlotCache`."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # An indexed write into the whole buffer, never into a view of it: under compile a view's mutation is copied
        # back whole (seen: the full keys and values copied every step, 1.5x the eager step at batch 1).
        width, new = key_states.shape[0], key_states.shape[2]
        rows = torch.arange(width, device=key_states.device)[:, None].expand(width, new)
        columns = self.owner.columns
        self.keys[rows, :, columns] = key_states.permute(0, 2, 1, 3)  # indexed dims first: (rows, new, heads, dim)
        self.values[rows, :, columns] = value_states.permute(0, 2, 1, 3)
        span = self.owner.visible.shape[-1]  # under compile a symbolic size: one graph serves every span
        return self.keys[:width, :, :span], self.values[:width, :, :span]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.visible.shape[-1], 0

    def get_seq_length(self) -> int:
        return self.owner.visible.shape[-1]

    def get_max_length(self) -> int:
        return int(self.keys.shape[2])


class SlotCache(Cache):
    """Every layer's slots; `columns` (rows, new tokens) says where this call's keys go, `visible` (rows, span) which
    columns each row attends to. Both are set by `SlotBatch` before each forward."""

    def __init__(self, shapes: Sequence[tuple[int, int]], slots: int, context: int, dtype: torch.dtype, device: torch.device) -> None:
        layers = [
            SlotLayer(
                torch.zeros((slots, heads, context, dim), dtype=dtype, device=device),
                torch.zeros((slots, heads, context, dim), dtype=dtype, device=device),
                self,
            )
            for heads, dim in shapes
        ]
        super().__init__(layers=layers)
        for layer in layers:  # slots and context as sizes: a cache grown or sized for another batch needs no new graph
            for buffer in (layer.keys, layer.values):
                torch._dynamo.maybe_mark_dynamic(buffer, 0)
                torch._dynamo.maybe_mark_dynamic(buffer, 2)
        self.columns = torch.zeros((0, 1), dtype=torch.long, device=device)
        self.visible = torch.zeros((0, 0), dtype=torch.bool, device=device)

    @classmethod
    def for_model(cls, model: torch.nn.Module, slots: int, context: int, dtype: torch.dtype, device: torch.device | str) -> SlotCache:
        """A cache shaped for `model`'s decoder layers (their kv heads and head size)."""
        c = model.config
        dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls([(c.num_key_value_heads, dim)] * c.num_hidden_layers, slots, context, dtype, torch.device(device))

    @property
    def slots(self) -> int:
        return int(self.layers[0].keys.shape[0])

    @property
    def context(self) -> int:
        return int(self.layers[0].keys.shape[2])

    def grown(self, slots: int, context: int) -> SlotCache:
        """A larger cache holding this one's contents."""
        first = self.layers[0].keys
        bigger = SlotCache([(layer.keys.shape[1], layer.keys.shape[3]) for layer in self.layers], slots, context, first.dtype, first.device)
        for old, new in zip(self.layers, bigger.layers):
            new.keys[: self.slots, :, : self.context] = old.keys
            new.values[: self.slots, :, : self.context] = old.values
        return bigger

    def move(self, source: int, target: int, columns: int) -> None:
        """Copy slot `source`'s first `columns` columns into slot `target`."""
        for layer in self.layers:
            layer.keys[target, :, :columns] = layer.keys[source, :, :columns]
            layer.values[target, :, :columns] = layer.values[source, :, :columns]


def decode_step(model: torch.nn.Module, cache: SlotCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits of every row's next token: row r's input `tokens[r]` sits at `positions[r]`, written into column
    `positions[r]` of its slot, and attends to the columns `cache.visible[r]` allows (a boolean mask: any dtype)."""
    mask = cache.visible[:, None, None, :]
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :]


def compiled_step(mode: str, device: torch.device | str = "cpu") -> Callable[..., torch.Tensor]:
    """`decode_step` under torch.compile (inductor; `mode` as torch names it); "off" returns it eager.

    One graph for every width and span (`SlotBatch.step` marks both sizes dynamic): compiled once, and on a 2-core
    EPYC faster at every width than a graph per width was, with one copy of the prepacked weights instead of one per
    graph. On a CPU the weights are frozen into the graph and prepacked (inductor's `freezing`): the matrix products
    are most of a step (docs/engines.md has the measurements)."""
    if mode == "off":
        return decode_step
    if torch.device(device).type == "cpu":
        # Set process-wide: passed as torch.compile's `options` it left the weights unpacked (aten::mm). Linear layers
        # that read one input (q/k/v, gate/up) stacked into one product, as prepacking does eagerly: the step 0.95x
        # at one row and 0.90x at eight (docs/engines.md).
        torch._inductor.config.freezing = True
        torch._inductor.config.cpp.enable_concat_linear = True
    return torch.compile(decode_step, mode=None if mode == "default" else mode)


class SlotBatch(Batch):
    """Continuous batching over a `SlotCache`, with `RunningBatch`'s interface. Not thread-safe."""

    def __init__(
        self, engine: Engine, slots: int, step: Callable[..., torch.Tensor], compiled: bool = False, reuse_prefixes: bool = True
    ) -> None:
        # A compiled step runs one row as two (`compiled_width`), the idle slot's output ignored; eager, the exact width.
        super().__init__(engine, reuse_prefixes)
        self.capacity, self._step, self.compiled = slots, step, compiled
        self.cache: SlotCache | None = None
        with torch.inference_mode():  # as everything `_reserve` grows them into: a compiled graph's guards see one kind
            self._positions = torch.zeros((slots, 1), dtype=torch.long, device=engine.device)  # each slot's next input position
            self._last = torch.zeros((slots, 1), dtype=torch.long, device=engine.device)  # each slot's newest token

    @torch.inference_mode()
    def step(self) -> list[RowToken]:
        """One decode step: a new token for every row."""
        if not self.rows or self.cache is None:
            return []
        width = len(self.rows)
        run = compiled_width(width) if self.compiled else width
        longest = int(self._positions[:width].max()) + 1
        if longest > self.cache.context or run > self.cache.slots:
            self._reserve(run, longest, self.cache.layers[0].keys.dtype)
        positions = self._positions[:run]
        visible = torch.arange(longest, device=positions.device) <= positions  # (rows, span)
        tokens = self._last[:run]
        for tensor in (tokens, positions, visible):  # widths and spans as sizes, not new graphs
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
        torch._dynamo.maybe_mark_dynamic(visible, 1)
        self.cache.columns, self.cache.visible = positions, visible
        logits = self._step(self.engine.model, self.cache, tokens, positions)[:width]
        chosen = self.engine.pick(logits, [r.stop_at_eos for r in self.rows])
        self._positions[:width] += 1
        self._last[:width, 0] = chosen
        return self._record(list(self.rows), chosen.tolist())

    @torch.inference_mode()
    def drop(self, keys: set[Hashable]) -> None:
        """Remove rows; the last live row moves into each freed slot, so the live rows stay slots 0..w-1."""
        for slot in sorted((i for i, r in enumerate(self.rows) if r.key in keys), reverse=True):
            last = len(self.rows) - 1
            if slot != last and self.cache is not None:
                self.cache.move(last, slot, int(self._positions[last]))
                self._positions[slot], self._last[slot] = self._positions[last], self._last[last]
                self.rows[slot] = self.rows[last]
            self._positions[last] = 0  # a free slot may ride along in a wider step: it writes its own column 0
            self.rows.pop()

    def _admit(self, new: Prefilled) -> None:
        """Copy the newcomers' keys and values from the prefill's padded cache into the next free slots."""
        self._reserve(len(self.rows) + len(new.rows), max(r.prompt_tokens + 1 for r in new.rows), new.cache.layers[0].keys.dtype)
        assert self.cache is not None
        for i in range(len(new.rows)):
            slot, length, used = len(self.rows) + i, int(new.next_positions[i]), new.mask[i].bool()
            for layer, prefilled in zip(self.cache.layers, new.cache.layers):
                layer.keys[slot, :, :length] = prefilled.keys[i, :, used]
                layer.values[slot, :, :length] = prefilled.values[i, :, used]
            self._positions[slot, 0], self._last[slot, 0] = length, new.first[i]

    def _row_kv(self, index: int) -> KV:
        assert self.cache is not None
        n = int(self._positions[index])
        return tuple(
            (layer.keys[index : index + 1, :, :n].clone(), layer.values[index : index + 1, :, :n].clone()) for layer in self.cache.layers
        )

    def _reserve(self, slots: int, context: int, dtype: torch.dtype) -> None:
        """Make room for `slots` rows of `context` columns: allocate, or grow by doubling (up to the model's limit)."""
        if context > self.engine.max_context:
            raise ValueError(f"a row reached {context} tokens: more than the model's context ({self.engine.max_context})")
        wanted = min(max(MIN_CONTEXT, 2 ** math.ceil(math.log2(context))), self.engine.max_context)
        if slots > self._positions.shape[0]:
            grow = slots - self._positions.shape[0]
            self._positions = torch.cat([self._positions, self._positions.new_zeros((grow, 1))])
            self._last = torch.cat([self._last, self._last.new_zeros((grow, 1))])
        if self.cache is None:
            self.cache = SlotCache.for_model(self.engine.model, max(slots, self.capacity), wanted, dtype, self.engine.device)
        elif slots > self.cache.slots or context > self.cache.context:
            self.cache = self.cache.grown(max(slots, self.cache.slots), max(wanted, self.cache.context))


def compiled_width(rows: int) -> int:
    """The width a compiled step runs `rows` rows at: one row as two, since torch would compile a width of 1 apart."""
    return max(2, rows)
