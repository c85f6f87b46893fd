"""Which optimization moves the case study's summaries away from the baseline's, and is the baseline stable?

The optimized stage compares its chapter summaries with the baseline's by ROUGE-L (a similarity, not
quality) and gates at 0.5. This serves the same chapters through the baseline, the baseline again (its
own repeatability: greedy decoding should give the same text), each optimization alone and the full
stack, and reports ROUGE-L against the baseline for the map step (each chunk's summary, mean per
chapter) and for the final summary, as the stage does (`CaseStudy.compare`). A chunk summary is 48 tokens, so it
shows where the greedy paths part before the reduce
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
from perfkit.stages.optimized.case_study import CaseStudy, summarize_on

BATCHING = {"serving.scheduler": "dynamic", "serving.max_batch_size": 8}
PRECISION = {"serving.dtype": "bfloat16"}
STACKS = {
    "baseline again": BASELINE,
    "+ precision only": BASELINE | PRECISION,
    "+ batching only": BASELINE | BATCHING,
    "full (batching + precision)": BASELINE | BATCHING | PRECISION,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", type=int, default=2)
    args = parser.parse_args()
    cfg = config.load("optimized")
    tokenizer = load_tokenizer(cfg.resolve(cfg.model.path))
    chapters = tuple(casestudy.chapters(cfg.corpus_dir, tokenizer, args.chapters))
    reference = summarize_on(cfg, BASELINE, chapters, tokenizer)
    result = {"chapters": [c.number for c in chapters], "load_avg": os.getloadavg()[0], "rouge_l_vs_baseline": {}}
    for name, overrides in STACKS.items():
        s = CaseStudy.compare(chapters, reference, summarize_on(cfg, overrides, chapters, tokenizer),
                              cfg.optimized.case_study.min_rouge_l).summary()
        row = {"chunks": s["case_study_chunk_rouge_l_mean"], "final": s["case_study_rouge_l_mean"],
               "identical_chunks": s["case_study_identical_chunks"], "chunk_count": s["case_study_chunks"]}
        result["rouge_l_vs_baseline"][name] = row
        print(f"{name}: chunk summaries ROUGE-L {row['chunks']:.3f} ({row['identical_chunks']} of {row['chunk_count']} "
              f"identical), final {row['final']:.3f}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
