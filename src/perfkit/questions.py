"""The cache workload: questions about the corpus, drawn with Zipf popularity, with paraphrases and near-misses.

A cache's effect is h * t_hit + (1 - h) * t_miss, so a cache measurement is only as good as its
hit rate, and the hit rate is a property of the workload. Here an *intent* is one question about
two characters of one novel ("What does Mr. Knightley think of Mrs. Weston in Emma?"); its
characters are the most-named people of each novel in `data/corpus/` (honorific names such as
"Mr. Darcy", counted in the text). Intents are ranked by a seeded shuffle and drawn with Zipf
popularity, p(rank k) proportional to 1 / k^s, so a few intents are asked often and most rarely.

Each intent has several paraphrase templates: an exact cache only hits on the same words, a
semantic cache should also hit on a paraphrase (a right hit). A near-miss differs from a drawn
intent only in one character or in the novel; a semantic cache that answers it from the cached
intent gives a wrong answer (a wrong hit), counted against this ground truth.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from perfkit.workload import WORKLOAD_NOVELS, read_novel

TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}
RELATIONS: dict[str, tuple[str, ...]] = {
    "opinion": (
        "What does {a} think of {b} in {novel}?",
        "In {novel}, how does {a} feel about {b}?",
        "What is {a}'s opinion of {b} in {novel}?",
    ),
    "meeting": (
        "How do {a} and {b} first meet in {novel}?",
        "In {novel}, where do {a} and {b} meet for the first time?",
        "Describe the first meeting of {a} and {b} in {novel}.",
    ),
    "bond": (
        "How is {a} connected to {b} in {novel}?",
        "In {novel}, what is the relationship between {a} and {b}?",
        "What ties {a} to {b} in {novel}?",
    ),
}
_NAME = re.compile(r"\b(?:Mr|Mrs|Miss|Lady|Sir|Colonel|Captain|General|Dr)\. [A-Z][a-z]+")


@dataclass(frozen=True, order=True)
class Intent:
    relation: str
    novel: str
    a: str
    b: str


@dataclass(frozen=True)
class Question:
    intent: Intent
    paraphrase: int
    near_miss: bool = False

    @property
    def text(self) -> str:
        i = self.intent
        return RELATIONS[i.relation][self.paraphrase].format(a=i.a, b=i.b, novel=TITLES[i.novel])


@lru_cache(maxsize=4)
def characters(corpus_dir: Path, per_novel: int = 6) -> dict[str, tuple[str, ...]]:
    """The `per_novel` most-named characters of each workload novel ("Mr. Darcy"), most named first."""
    out = {}
    for novel in WORKLOAD_NOVELS:
        counts = Counter(_NAME.findall(read_novel(corpus_dir, novel).replace("\n", " ")))
        out[novel] = tuple(name for name, _ in counts.most_common(per_novel))
    return out


def intents(corpus_dir: Path, seed: int = 0, per_novel: int = 6) -> list[Intent]:
    """Every (relation, novel, a, b) with a != b, in a seeded popularity order (rank 1 first)."""
    cast = characters(corpus_dir, per_novel)
    pool = [Intent(r, n, a, b) for r in RELATIONS for n, names in cast.items() for a in names for b in names if a != b]
    random.Random(seed).shuffle(pool)
    return pool


def near_miss(intent: Intent, cast: dict[str, tuple[str, ...]], rng: random.Random) -> Intent:
    """The same question with one character swapped for another of the novel, or set in another novel."""
    if rng.random() < 0.5:
        others = [c for c in cast[intent.novel] if c not in (intent.a, intent.b)]
        return Intent(intent.relation, intent.novel, intent.a, rng.choice(others))
    return Intent(intent.relation, rng.choice([n for n in cast if n != intent.novel]), intent.a, intent.b)


def zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def zipf_stream(
    pool: Sequence[Intent],
    n: int,
    s: float,
    seed: int = 0,
    paraphrases: bool = True,
    near_misses: float = 0.0,
    cast: dict[str, tuple[str, ...]] | None = None,
) -> list[Question]:
    """`n` questions: intents by Zipf(s) rank, a random paraphrase each, a share `near_misses` swapped for a near-miss."""
    rng = random.Random(seed)
    ranks = np.random.default_rng(seed).choice(len(pool), size=n, p=zipf_weights(len(pool), s))
    out = []
    for r in ranks:
        intent = pool[int(r)]
        miss = cast is not None and rng.random() < near_misses
        if miss:
            intent = near_miss(intent, cast, rng)  # type: ignore[arg-type]
        out.append(Question(intent, rng.randrange(len(RELATIONS[intent.relation])) if paraphrases else 0, miss))
    return out


def fresh_stream(pool: Sequence[Intent], n: int, seed: int = 0) -> list[Question]:
    """`n` questions no two alike (the 0% point): distinct intents from the tail of the popularity order."""
    rng = random.Random(seed)
    return [Question(i, rng.randrange(len(RELATIONS[i.relation]))) for i in list(pool)[::-1][:n]]


def exact_hit_rate(stream: Sequence[Question], warm: Sequence[Question] = ()) -> float:
    """The hit rate an unbounded exact cache gets on `stream` after `warm` was asked (same text = hit)."""
    seen = {q.text for q in warm}
    hits = 0
    for q in stream:
        hits += q.text in seen
        seen.add(q.text)
    return hits / len(stream) if stream else 0.0


@dataclass(frozen=True)
class Point:
    """One hit-rate setting: the questions asked before measuring (warm) and the measured stream."""

    target: float
    zipf_s: float
    warm: tuple[Question, ...]
    stream: tuple[Question, ...]
    planned_hit_rate: float


def plan_point(
    pool: Sequence[Intent],
    target: float,
    min_misses: int = 10,
    min_requests: int = 20,
    max_requests: int = 1000,
    max_warm: int = 40,
    seed: int = 0,
    paraphrases: bool = False,
) -> Point:
    """A stream whose exact hit rate (simulated on the fixed seed) is nearest `target`, at least `min_misses` misses.

    The 0% point asks distinct questions; the others draw Zipf(s) and pre-warm the cache with the
    `k` most popular questions, choosing (s, k) on a small grid for the nearest simulated rate at the
    least warm-up. The stage reports the hit rate it measured, not this plan.
    """
    n = max(min_requests, min(max_requests, math.ceil(min_misses / max(1e-9, 1 - target))))
    if target <= 0:
        stream = fresh_stream(pool, min(n, len(pool)), seed)
        return Point(target, 0.0, (), tuple(stream), 0.0)
    best: tuple[float, int, Point] | None = None
    for s in np.arange(0.6, 4.01, 0.2):
        stream = zipf_stream(pool, n, float(s), seed, paraphrases)
        for k in (0, 1, 2, 3, 5, 8, 12, 20, 30, 40):
            if k > max_warm:
                break
            warm = tuple(Question(i, 0) for i in pool[:k])
            if paraphrases:
                warm = tuple(Question(i, p) for i in pool[:k] for p in range(len(RELATIONS[i.relation])))[:k]
            rate = exact_hit_rate(stream, warm)
            score = abs(rate - target) + 0.0005 * k  # a close rate first, then the cheaper warm-up
            if (1 - rate) * n < min_misses * 0.8 and target < 1:
                score += 1.0  # too few misses to fit t_miss at this point
            if best is None or score < best[0]:
                best = (score, k, Point(target, float(s), warm, tuple(stream), rate))
    assert best is not None
    return best[2]


@dataclass(frozen=True)
class SemanticCount:
    threshold: float
    requests: int
    hits: int
    wrong_hits: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def precision(self) -> float:
        """Right hits over all hits (1 when nothing hit)."""
        return (self.hits - self.wrong_hits) / self.hits if self.hits else 1.0

    @property
    def wrong_hit_rate(self) -> float:
        return self.wrong_hits / self.requests if self.requests else 0.0


def simulate_semantic(stream: Sequence[Question], vectors: np.ndarray, threshold: float) -> SemanticCount:
    """Replay a semantic cache over `stream` (`vectors`: its unit embeddings, row per question).

    Exact text first, then the most similar earlier question at or above `threshold`; a hit is
    wrong when the question that filled the entry had another intent. Misses are stored.
    """
    texts: dict[str, int] = {}
    kept: list[int] = []
    hits = wrong = 0
    for i, q in enumerate(stream):
        source = texts.get(q.text)
        if source is None and kept:
            sims = vectors[kept] @ vectors[i]
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                source = kept[best]
        if source is None:
            texts[q.text] = i
            kept.append(i)
            continue
        hits += 1
        wrong += stream[source].intent != q.intent
    return SemanticCount(threshold, len(stream), hits, wrong)
