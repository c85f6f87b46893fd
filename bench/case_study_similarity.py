"""Which optimization moves the case study's summaries away from the baseline's, and is the baseline stable?

The optimized stage compares its documents' summaries with the baseline's by ROUGE-L (a similarity,
not quality) and gates at 0.5. This serves the same documents through the baseline, the baseline again
(its own repeatability: greedy decoding should give the same text), each optimization alone and the
full stack, and reports ROUGE-L against the baseline for the map step (each chunk's summary, mean per
document) and for the final summary, as the stage does (`case_study.similarity`). A chunk summary is 48
tokens, so it shows where the greedy paths part before the reduce step compounds it.

    .venv/bin/python bench/case_study_similarity.py [--documents 2]

Prints one line per stack, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os

from perfkit import casestudy, config
from perfkit.load.served import BASELINE
from perfkit.models import load_tokenizer
from perfkit.stages.optimized.case_study import similarity, summarize_on

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
    parser.add_argument("--documents", type=int, default=2)
    args = parser.parse_args()
    cfg = config.load("optimized")
    study = cfg.optimized.case_study
    tokenizer = load_tokenizer(cfg.resolve(cfg.model.path))
    documents = tuple(casestudy.chapters(cfg.corpus_dir, tokenizer, args.documents, max_tokens=study.document_tokens))
    reference = summarize_on(cfg, BASELINE, documents, tokenizer).summaries
    result = {"chapters": [c.number for c in documents], "load_avg": os.getloadavg()[0], "rouge_l_vs_baseline": {}}
    for name, overrides in STACKS.items():
        sim = similarity(summarize_on(cfg, overrides, documents, tokenizer).summaries, reference)
        row = {
            "chunks": sum(sim.chunks) / len(sim.chunks),
            "final": sim.mean,
            "identical_chunks": sim.identical_chunks,
            "chunk_count": sim.chunk_count,
        }
        result["rouge_l_vs_baseline"][name] = row
        print(
            f"{name}: chunk summaries ROUGE-L {row['chunks']:.3f} ({row['identical_chunks']} of {row['chunk_count']} "
            f"identical), final {row['final']:.3f}",
            flush=True,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
