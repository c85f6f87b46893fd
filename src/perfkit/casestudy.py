"""The document-summary case study (claim C20): whole chapters summarized by map-reduce through a server.

Documents are chapters of the held-out novel (*Persuasion*), each cut to its first `document_tokens`
tokens when that is set, then into chunks of `chunk_tokens` tokens; each chunk is summarized (the map
requests are sent together, so a batching server can batch them), then the chunk summaries are
summarized into one (the reduce request). A service summarizes many documents at once
(`summarize_all`): documents per minute is documents over the wall time of all of them.

ROUGE-L (F1, `rouge-score`) of one stack's final summaries against another's says how similar they
are, not how good either is: a lower precision changes greedy decoding a little and then the rest of
the text follows a different path.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from perfkit.endpoints.base import ChatRequest, Endpoint
from perfkit.errors import PerfkitError
from perfkit.workload import HELDOUT_NOVEL, paragraphs, read_novel

CHUNK_INSTRUCTION = "Summarize this part of a chapter in three sentences:\n\n"
REDUCE_INSTRUCTION = "These are summaries of consecutive parts of one chapter. Write one summary of the chapter:\n\n"
_HEADING = re.compile(r"^Chapter \d+\s*$", re.MULTILINE)


class CaseStudyError(PerfkitError, RuntimeError):
    """A summary request failed: the endpoint refused it or cut the answer."""


@dataclass(frozen=True)
class Chapter:
    number: int
    text: str
    tokens: int


@dataclass(frozen=True)
class Summary:
    chapter: int
    chunks: int
    seconds: float
    text: str
    output_tokens: int
    chunk_summaries: tuple[str, ...] = ()  # the map step's answers, in chunk order


def chapters(corpus_dir: Path, tokenizer, count: int, novel: str = HELDOUT_NOVEL, max_tokens: int = 0) -> list[Chapter]:
    """The `count` shortest chapters of `novel` (by tokens), in chapter order, each cut to its first `max_tokens`
    tokens when that is set (0: whole chapters)."""
    parts = _HEADING.split(read_novel(corpus_dir, novel))[1:]  # text before Chapter 1 is the title page
    found = []
    for number, raw in enumerate(parts, start=1):
        ids = tokenizer("\n\n".join(paragraphs(raw)), add_special_tokens=False)["input_ids"]
        ids = ids[:max_tokens] if max_tokens else ids
        found.append(Chapter(number, tokenizer.decode(ids), len(ids)))
    return sorted(sorted(found, key=lambda c: c.tokens)[:count], key=lambda c: c.number)


def chunks(text: str, tokenizer, chunk_tokens: int) -> list[str]:
    """Consecutive pieces of at most `chunk_tokens` tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(ids[i : i + chunk_tokens]) for i in range(0, len(ids), chunk_tokens)]


def _complete(endpoint: Endpoint, content: str, max_tokens: int) -> tuple[str, int]:
    answer = endpoint.complete(ChatRequest(({"role": "user", "content": content},), max_tokens, fixed_length=False))
    if not answer.ok:
        raise CaseStudyError(f"{endpoint.facts.engine} answered HTTP {answer.status}: {answer.error}")
    return answer.text, answer.output_tokens


def summarize_chapter(
    endpoint: Endpoint, chapter: Chapter, tokenizer, *, chunk_tokens: int, chunk_summary_tokens: int, summary_tokens: int
) -> Summary:
    """Map (every chunk at once) then reduce, against one server; the wall time of both."""
    pieces = chunks(chapter.text, tokenizer, chunk_tokens)
    started = time.perf_counter()
    with ThreadPoolExecutor(len(pieces)) as pool:
        mapped = list(pool.map(lambda p: _complete(endpoint, CHUNK_INSTRUCTION + p, chunk_summary_tokens), pieces))
        text, tokens = _complete(endpoint, REDUCE_INSTRUCTION + "\n\n".join(t for t, _ in mapped), summary_tokens)
    seconds = time.perf_counter() - started
    return Summary(chapter.number, len(pieces), seconds, text, tokens + sum(n for _, n in mapped), tuple(t for t, _ in mapped))


def summarize_all(endpoint: Endpoint, documents: Sequence[Chapter], tokenizer, **sizes: int) -> tuple[tuple[Summary, ...], float]:
    """Every document map-reduced at once against one server, as a service receives them: (summaries, wall seconds)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(documents)) as pool:
        done = tuple(pool.map(lambda d: summarize_chapter(endpoint, d, tokenizer, **sizes), documents))
    return done, time.perf_counter() - started


def rouge_l(candidates: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 of each candidate against its reference (similarity of two texts, not quality)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, cand)["rougeL"].fmeasure for cand, ref in zip(candidates, references, strict=True)]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
