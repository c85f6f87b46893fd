"""Prefix (KV) caching: requests that share a long prompt prefix reuse its keys and values.

A Dify-style application sends the same system prompt (instructions, retrieved passages) before
every user question; prefill recomputes its keys and values each time, and prefill is what time
to first token pays. vLLM's automatic prefix caching and SGLang's radix cache keep those tensors;
here `PrefixStore` keeps the key/value cache of a declared prefix (for chat: the templated
tokens up to the end of the system turn) in an LRU bounded in bytes (a 1,024-token prefix of
SmolLM2-135M is ~45 MB in fp32). A request whose prefix is stored prefills only its suffix.

Sharing is safe without a copy: transformers' `DynamicLayer.update` concatenates into a new
tensor rather than writing in place, so a fresh `DynamicCache` whose layers point at the stored
tensors grows away from them and the store is never modified. Reuse applies to a request that
joins a batch alone (the sequential scheduler, or one newcomer of a continuous batch): rows of a
multi-row prefill are left-padded to a common width, which a stored prefix cannot line up with.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from perfkit.engine import Engine

KV = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer: keys, values (1, heads, prefix tokens, head dim)


class PrefixStore:
    """An LRU of prefix KV caches keyed by the prefix's token ids, bounded in bytes."""

    def __init__(self, max_bytes: int, min_tokens: int = 16) -> None:
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self._items: collections.OrderedDict[bytes, tuple[int, KV]] = collections.OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def key(prefix: Sequence[int]) -> bytes:
        return hashlib.sha256(torch.tensor(list(prefix), dtype=torch.int64).numpy().tobytes()).digest()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, prefix: Sequence[int]) -> KV | None:
        key = self.key(prefix)
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[1]

    def put(self, prefix: Sequence[int], kv: KV) -> None:
        size = sum(k.nbytes + v.nbytes for k, v in kv)
        if size > self.max_bytes:
            return
        key = self.key(prefix)
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[0]
        self._items[key] = (size, kv)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (gone, _) = self._items.popitem(last=False)
            self.bytes -= gone
            self.evictions += 1


def shared_cache(model: Any, kv: KV) -> Any:
    """A DynamicCache whose layers point at `kv` (no copy), or None where the model's layers are not plain."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    if len(cache.layers) != len(kv) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    for layer, (k, v) in zip(cache.layers, kv):
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return cache


def stored_prefix(cache: Any, length: int) -> KV:
    """The first `length` columns of a one-row cache, copied so the running row can drop its own cache."""
    return tuple((layer.keys[:, :, :length].clone(), layer.values[:, :, :length].clone()) for layer in cache.layers)


def system_prefix_len(engine: Engine, messages: list[dict[str, Any]], ids: Sequence[int]) -> int:
    """Tokens of `ids` up to the end of the leading system turn(s): the prefix a store may share, else 0."""
    store = getattr(engine, "prefix_store", None)
    leading = 0
    while leading < len(messages) and messages[leading]["role"] in ("system", "developer"):
        leading += 1
    if store is None or leading == 0 or leading == len(messages):
        return 0
    tok = engine.tokenizer
    if not getattr(tok, "chat_template", None):
        return 0
    enc = tok.apply_chat_template(messages[:leading], add_generation_prompt=False, tokenize=True)
    head = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
    if len(head) < store.min_tokens or len(head) >= len(ids) or list(ids[: len(head)]) != head:
        return 0
    return len(head)
