"""Which optimization moves the case study's summaries away from the baseline's, and is the baseline stable?

The optimized stage compares its chapter summaries with the baseline's by ROUGE-L (a similarity, not
quality) and gates at 0.5. This serves the same chapters through the baseline, the baseline again (its
own repeatability: greedy decoding should give the same text), each optimization alone and the full
stack, and reports ROUGE-L against the baseline for the map step (each chunk's summary) and for the
final summary. A chunk summary is 48 tokens, so it shows where the greedy paths part before the reduce
step compounds it.

    .venv/bin/python bench/case_study_similarity.py [--chapters 2]

Prints one line per stack, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
from perfkit import casestudy, config
from perfkit.load.served import BASELINE
from perfkit.models import load_tokenizer
from perfkit.serving.launch import launch

BATCHING = {"serving.scheduler": "dynamic", "serving.max_batch_size": 8}
PRECISION = {"serving.dtype": "bfloat16"}
STACKS = {
    "baseline again": BASELINE,
    "+ precision only": BASELINE | PRECISION,
    "+ batching only": BASELINE | BATCHING,
    "full (batching + precision)": BASELINE | BATCHING | PRECISION,
}


def summaries(cfg: config.Config, overrides: dict, chapters: list[casestudy.Chapter], tokenizer) -> dict[str, list[str]]:
    """Chunk summaries and final summaries of `chapters`, map-reduced as the stage does, on a fresh server."""
    study = cfg.optimized.case_study
    with launch(cfg, overrides=overrides, probe_cold_start=False) as handle:
        done = [casestudy.summarize_chapter(handle.base_url, cfg.model.name, ch, tokenizer, chunk_tokens=study.chunk_tokens,
                                            chunk_summary_tokens=study.chunk_summary_tokens,
                                            summary_tokens=study.summary_tokens) for ch in chapters]
    return {"chunks": [t for s in done for t in s.chunk_summaries], "final": [s.text for s in done]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", type=int, default=2)
    args = parser.parse_args()
    cfg = config.load("optimized")
    tokenizer = load_tokenizer(cfg.resolve(cfg.model.path))
    chapters = casestudy.chapters(cfg.corpus_dir, tokenizer, args.chapters)
    reference = summaries(cfg, BASELINE, chapters, tokenizer)
    result = {"chapters": [c.number for c in chapters], "chunks": len(reference["chunks"]), "load_avg": os.getloadavg()[0],
              "rouge_l_vs_baseline": {}}
    for name, overrides in STACKS.items():
        got = summaries(cfg, overrides, chapters, tokenizer)
        row = {part: casestudy.mean(casestudy.rouge_l(got[part], reference[part])) for part in ("chunks", "final")}
        row["identical_chunks"] = sum(a == b for a, b in zip(got["chunks"], reference["chunks"], strict=True))
        result["rouge_l_vs_baseline"][name] = row
        print(f"{name}: chunk summaries ROUGE-L {row['chunks']:.3f} ({row['identical_chunks']} of "
              f"{len(reference['chunks'])} identical), final {row['final']:.3f}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
