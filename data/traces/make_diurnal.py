"""Write diurnal.jsonl: a small request trace in Mooncake's JSONL format, generated from a diurnal pattern.

The default `workload.kind: trace` replays it, so no trace is downloaded. One "day" is compressed into
`DAY_S` seconds: arrivals are a Poisson process whose rate follows a raised cosine from `LOW_RPS` at
night to `HIGH_RPS` at midday (drawn by thinning, seeded). Input lengths are lognormal (median 256
tokens), output lengths lognormal (median 32 tokens). Like Mooncake's traces, `hash_ids` name the
512-token blocks of each input: a third of the requests open with one of three shared system blocks
(ids 0-2), so a prefix cache sees reuse; every other block is unique to its request.

    python data/traces/make_diurnal.py   # rewrites data/traces/diurnal.jsonl
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

SEED = 20261206
DAY_S = 240.0
LOW_RPS, HIGH_RPS = 0.2, 1.6
BLOCK = 512


def rate(t: float) -> float:
    return LOW_RPS + (HIGH_RPS - LOW_RPS) * (1 - math.cos(2 * math.pi * t / DAY_S)) / 2


def records(seed: int = SEED) -> list[dict[str, object]]:
    rng = random.Random(seed)
    out, t, next_block = [], 0.0, 3
    while True:
        t += rng.expovariate(HIGH_RPS)  # thinning: candidates at the peak rate, kept with rate(t) / peak
        if t >= DAY_S:
            return out
        if rng.random() > rate(t) / HIGH_RPS:
            continue
        n_in = min(max(round(rng.lognormvariate(math.log(256), 0.6)), 16), 2048)
        n_out = min(max(round(rng.lognormvariate(math.log(32), 0.5)), 4), 256)
        shared = [rng.randrange(3)] if rng.random() < 1 / 3 else []
        unique = math.ceil(n_in / BLOCK) - len(shared)
        ids = shared + list(range(next_block, next_block + unique))
        next_block += unique
        out.append({"timestamp": round(t * 1000), "input_length": n_in, "output_length": n_out, "hash_ids": ids})


if __name__ == "__main__":
    path = Path(__file__).with_name("diurnal.jsonl")
    rows = records()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{path}: {len(rows)} requests over {DAY_S:g} s")
