"""Prefix (KV) caching: a prompt reuses the keys and values of the longest token prefix already computed.

A Dify-style application sends the same system prompt (instructions, retrieved passages) before every
user question, and a chat re-sends its whole history, the model's own answers included, at every turn;
prefill recomputes those keys and values each time, and prefill is what time to first token pays.
vLLM's automatic prefix caching (hashed blocks) and SGLang's radix cache keep them. Here `PrefixStore`
keeps the KV cache of every finished row, prompt and generated tokens (all but the last, which was
never fed back), in an LRU bounded in bytes (a 1,024-token sequence of SmolLM2-135M is ~45 MB in
fp32); an entry that a newer one extends is dropped, so a conversation keeps one entry, its latest turn.
A new prompt is matched token by token against every entry; the longest common prefix, if it reaches
`min_tokens`, is reused and only the rest of the prompt is prefilled. Token-level matching, not a
declared prefix, is what lets a chat turn reuse the previous answer: the client sends the answer as
text, and its re-tokenization matches the generated ids up to where it differs (if it does).

Sharing is safe without a copy: transformers' `DynamicLayer.update` concatenates into a new tensor
rather than writing in place, so a cache whose layers point at stored tensors (or views of them) grows
away from them and the store is never modified.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

KV = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer: keys, values (1, heads, tokens, head dim)


@dataclass(frozen=True)
class _Entry:
    ids: torch.Tensor  # (tokens,) int64
    kv: KV
    nbytes: int


class PrefixStore:
    """An LRU of token sequences' KV caches, bounded in bytes; `match` finds the longest stored prefix of a prompt."""

    def __init__(self, max_bytes: int, min_tokens: int = 16) -> None:
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self._items: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._ids = itertools.count()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self.prompt_tokens = self.matched_tokens = 0  # over every lookup: the share of prompt tokens not recomputed

    def __len__(self) -> int:
        return len(self._items)

    def match(self, prompt: Sequence[int]) -> tuple[int, KV | None]:
        """The longest stored prefix of `prompt` (at most all but its last token, which must be run for its logits)
        and views of its keys and values; (0, None) where none reaches `min_tokens`."""
        ids = torch.tensor(list(prompt), dtype=torch.int64)
        best, found = 0, None
        for key, entry in self._items.items():
            n = min(len(entry.ids), len(ids) - 1)
            differ = (entry.ids[:n] != ids[:n]).nonzero()
            common = int(differ[0]) if len(differ) else n
            if common > best:
                best, found = common, key
        self.prompt_tokens += len(ids)
        if found is None or best < self.min_tokens:
            self.misses += 1
            return 0, None
        self._items.move_to_end(found)
        self.hits += 1
        self.matched_tokens += best
        return best, tuple((k[:, :, :best], v[:, :, :best]) for k, v in self._items[found].kv)

    def put(self, sequence: Sequence[int], kv: KV) -> None:
        """Keep `sequence`'s keys and values (one row, all of its columns), dropping the entries it extends."""
        ids = torch.tensor(list(sequence), dtype=torch.int64)
        size = sum(k.nbytes + v.nbytes for k, v in kv)
        if len(ids) < self.min_tokens or size > self.max_bytes:
            return
        for key, entry in list(self._items.items()):
            n = min(len(entry.ids), len(ids))
            if not torch.equal(entry.ids[:n], ids[:n]):
                continue
            if len(entry.ids) >= len(ids):  # already held by a longer entry
                self._items.move_to_end(key)
                return
            self.bytes -= entry.nbytes  # the new sequence extends it
            del self._items[key]
        self._items[next(self._ids)] = _Entry(ids, kv, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, gone = self._items.popitem(last=False)
            self.bytes -= gone.nbytes
            self.evictions += 1


def past_cache(model: Any, kvs: Sequence[KV | None], lengths: Sequence[int]) -> Any:
    """A DynamicCache holding each row's reused prefix, left-padded to the longest (one row: views, no copy)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    first = next(kv for kv in kvs if kv is not None)
    if len(cache.layers) != len(first) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        raise ValueError("prefix reuse needs a model whose cache layers are plain DynamicLayers")
    width = max(lengths)
    for i, layer in enumerate(cache.layers):
        if len(kvs) == 1:
            keys, values = first[i]
        else:
            k0, v0 = first[i]
            keys = k0.new_zeros((len(kvs), k0.shape[1], width, k0.shape[3]))
            values = v0.new_zeros((len(kvs), v0.shape[1], width, v0.shape[3]))
            for row, (kv, n) in enumerate(zip(kvs, lengths)):
                if kv is not None and n:
                    keys[row, :, width - n :] = kv[i][0][0, :, :n]
                    values[row, :, width - n :] = kv[i][1][0, :, :n]
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    return cache
