"""Semantic caching: the vector index, wrong-hit counting against ground truth, the server's semantic mode."""

from __future__ import annotations

import numpy as np
from conftest import REPO
from test_serving_cache import cache_config, embedder, metric, start  # noqa: F401 -- the module-scoped embedder

from perfkit.questions import Intent, Question, characters, intents, near_miss, plan_point, simulate_semantic, zipf_stream
from perfkit.serving.semantic import VectorIndex

CORPUS = REPO / "data" / "corpus"


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_the_index_finds_the_nearest_row_of_the_same_context_above_the_threshold():
    index = VectorIndex(2, max_entries=3)
    index.add(b"a", unit(1, 0), context=1)
    index.add(b"b", unit(0, 1), context=1)
    index.add(b"c", unit(1, 0.05), context=2)
    assert index.nearest(unit(1, 0.1), 1, 0.9).key == b"a"
    assert index.nearest(unit(1, 0.1), 2, 0.9).key == b"c"
    assert index.nearest(unit(1, 1), 1, 0.9) is None  # 0.707: under the threshold
    index.add(b"d", unit(0.9, 0.1), context=1)  # full: the oldest row (a) goes
    assert len(index) == 3 and index.nearest(unit(1, 0), 1, 0.99).key == b"d"
    assert index.remove(b"b") and not index.remove(b"b") and len(index) == 2
    assert index.nearest(unit(0, 1), 1, 0.9) is None


def test_wrong_hits_are_counted_against_the_intent_on_a_fixture():
    knightley = Intent("opinion", "emma", "Mr. Knightley", "Mrs. Weston")
    elton = Intent("opinion", "emma", "Mr. Elton", "Mrs. Weston")
    stream = [Question(knightley, 0), Question(knightley, 1), Question(elton, 0, near_miss=True), Question(knightley, 0)]
    vectors = np.stack([unit(1, 0), unit(1, 0.1), unit(1, 0.3), unit(1, 0)])  # the near-miss sits close by
    loose, strict = simulate_semantic(stream, vectors, 0.9), simulate_semantic(stream, vectors, 0.999)
    assert (loose.hits, loose.wrong_hits) == (3, 1)  # paraphrase right, near-miss wrong, repeat right
    assert (strict.hits, strict.wrong_hits) == (1, 0)  # only the exact repeat
    assert loose.precision == 2 / 3 and strict.precision == 1.0


def test_the_workload_names_corpus_characters_and_plans_hit_rates():
    cast = characters(CORPUS)
    text = {n: open_novel(n) for n in cast}
    assert all(len(names) >= 4 and all(name in text[n] for name in names) for n, names in cast.items())
    pool = intents(CORPUS)
    assert len(set(pool)) == len(pool) > 100
    stream = zipf_stream(pool, 200, 1.2, seed=3, near_misses=0.3, cast=cast)
    assert any(q.near_miss for q in stream) and len({q.paraphrase for q in stream}) == 3
    assert zipf_stream(pool, 50, 1.2, seed=3) == zipf_stream(pool, 50, 1.2, seed=3)
    import random

    drawn = near_miss(pool[0], cast, random.Random(0))
    assert drawn != pool[0] and drawn.relation == pool[0].relation
    for target in (0.0, 0.5, 0.9):
        point = plan_point(pool, target, min_misses=10)
        assert abs(point.planned_hit_rate - target) < 0.1
        assert round((1 - point.planned_hit_rate) * len(point.stream)) >= 8


def open_novel(name: str) -> str:
    from perfkit.workload import read_novel

    return read_novel(CORPUS, name).replace("\n", " ")


def test_semantic_mode_serves_a_paraphrase_from_the_cache(tiny, tiny_model_dir, embedder, tmp_path):  # noqa: F811
    cfg = cache_config(tmp_path, tiny_model_dir, mode="semantic", backend="memory", similarity_threshold=0.8)
    client = start(cfg, tiny[2], embedder)
    try:

        def ask(text: str, max_tokens: int = 4):
            body = {"model": cfg.model.name, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
            return client.post("/v1/chat/completions", json=body)

        first = ask("What does Mr. Knightley think of Mrs. Weston in Emma?")
        para = ask("What is Mr. Knightley's opinion of Mrs. Weston in Emma?")
        other = ask("How many moons does Jupiter have?")
        longer = ask("What is Mr. Knightley's opinion of Mrs. Weston in Emma?", max_tokens=5)
        assert [r.headers["x-cache"] for r in (first, para, other, longer)] == ["miss", "hit", "miss", "miss"]
        assert para.headers["x-cache-entry"] == first.headers["x-cache-entry"]
        assert para.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
        assert metric(client, "perfkit_cache_hits_total", kind="semantic") == 1
        assert metric(client, "perfkit_cache_lookup_seconds_count", step="embed") >= 3
        assert metric(client, "perfkit_cache_index_rows") == 3
    finally:
        client.__exit__(None, None, None)
