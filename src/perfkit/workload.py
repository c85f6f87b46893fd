"""The request workload and the held-out evaluation text.

Jane Austen's six novels (public domain; `data/corpus/`, see its README) give both: five novels are
cut into paragraph-aligned passages of about `passage_words` words that become "summarize this
passage" chat prompts (the document-summary service the seed article describes), drawn with a
fixed seed so every variant sees the same requests; *Persuasion* is held out for perplexity.

Speed comparisons need a known prompt length, so `summary_prompts` cuts each passage to the token
budget it is given before wrapping it in the model's chat template.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerBase

WORKLOAD_NOVELS = ("emma", "mansfieldpark", "northangerabbey", "prideprejudice", "sensesensibility")
HELDOUT_NOVEL = "persuasion"
SUMMARY_INSTRUCTION = "Summarize this passage in two sentences:\n\n"
SYSTEM_INSTRUCTION = "You are a reading assistant. Answer from these passages only.\n\n"


@lru_cache(maxsize=8)
def read_novel(corpus_dir: Path, name: str) -> str:
    path = corpus_dir / f"{name}.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: corpus file missing (data/extract_janeausten.py writes it)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each folded onto one line."""
    out, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def passages(corpus_dir: Path, words: int = 300) -> list[str]:
    """Consecutive paragraphs joined until each passage holds at least `words` words, per novel."""
    result: list[str] = []
    for novel in WORKLOAD_NOVELS:
        current: list[str] = []
        count = 0
        for para in paragraphs(read_novel(corpus_dir, novel)):
            if para.isupper() or para.startswith("CHAPTER"):  # headings carry nothing to summarize
                continue
            current.append(para)
            count += len(para.split())
            if count >= words:
                result.append("\n\n".join(current))
                current, count = [], 0
    return result


def sample_passages(corpus_dir: Path, n: int, words: int = 300, seed: int = 0) -> list[str]:
    """`n` passages drawn with a fixed seed (with replacement only if the corpus runs out)."""
    pool = passages(corpus_dir, words)
    rng = random.Random(seed)
    return rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]


@dataclass(frozen=True)
class Prompt:
    """One request: the chat messages, and the templated token ids the engine runs."""

    messages: tuple[dict[str, str], ...]
    input_ids: tuple[int, ...]

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` under the model's chat template, ready for the assistant's turn."""
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
        return list(ids)
    return list(tokenizer("\n".join(m["content"] for m in messages))["input_ids"])


def summary_request(
    tokenizer: PreTrainedTokenizerBase, passage: str, prompt_tokens: int, system: tuple[dict[str, str], ...] = ()
) -> Prompt:
    """A "summarize this passage" turn (after `system`) whose templated length is `prompt_tokens` (or less, if the
    passage is shorter): the passage is cut to what the template and instruction leave."""
    overhead = len(chat_ids(tokenizer, [*system, {"role": "user", "content": SUMMARY_INSTRUCTION}]))
    ids = tokenizer(passage, add_special_tokens=False)["input_ids"][: max(1, prompt_tokens - overhead)]
    messages = (*system, {"role": "user", "content": SUMMARY_INSTRUCTION + tokenizer.decode(ids)})
    return Prompt(messages, tuple(chat_ids(tokenizer, list(messages))))


def summary_prompts(
    tokenizer: PreTrainedTokenizerBase, corpus_dir: Path, n: int, prompt_tokens: int, words: int = 300, seed: int = 0
) -> list[Prompt]:
    """`n` summary requests whose templated length is `prompt_tokens` tokens (or the passage's, if shorter)."""
    return [summary_request(tokenizer, p, prompt_tokens) for p in sample_passages(corpus_dir, n, words, seed)]


def system_turn(tokenizer: PreTrainedTokenizerBase, corpus_dir: Path, length: int) -> str:
    """A Dify-style system message whose templated turn is about `length` tokens: instructions, then corpus passages
    in reading order."""
    text = SYSTEM_INSTRUCTION
    for passage in passages(corpus_dir, 200):
        text += passage + "\n\n"
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > length + 64:
            break
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    overhead = len(chat_ids(tokenizer, [{"role": "system", "content": ""}]))
    return str(tokenizer.decode(ids[: max(1, length - overhead)]))


def heldout_ids(tokenizer: PreTrainedTokenizerBase, corpus_dir: Path, tokens: int) -> list[int]:
    """The first `tokens` tokens of the held-out novel, for perplexity and agreement."""
    text = "\n\n".join(paragraphs(read_novel(corpus_dir, HELDOUT_NOVEL)))
    ids = tokenizer(text[: tokens * 8], add_special_tokens=False)["input_ids"]
    if len(ids) < tokens:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids[:tokens])
