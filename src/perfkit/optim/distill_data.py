"""The distillation data: what the student reads, and the teacher's answer at every position.

Two sources, as the seed article describes ("teacher-generated data") plus plain text:
- *generated*: "summarize this passage" prompts from the training novels (`perfkit.workload`,
  with the data's own seed, not the workload's), each continued by the teacher's greedy decoding
  to `seq_len` tokens;
- *corpus*: `seq_len`-token passages of the five training novels. *Persuasion*, the evaluation
  text, is never read.

Then the teacher runs once over every sequence (fp32) and its next-token distribution at every
position is kept as its top-k logits, their token ids and the log-sum-exp over the whole
vocabulary at the temperature T (`perfkit.optim.distill` explains the loss built on them). The
result is one file under `data/distill/`, named by a hash of everything that went into it
(settings, teacher config and weights' size, corpus files), so a second run, and every student
and loss, reuse it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from perfkit import workload
from perfkit.optim.distill import Batches


@dataclass(frozen=True)
class DataPlan:
    seq_len: int = 256
    generated: int = 32  # sequences: prompt + the teacher's greedy continuation
    corpus: int = 96  # sequences of training-novel text
    prompt_tokens: int = 128
    top_k: int = 64
    temperature: float = 1.0
    seed: int = 1
    batch: int = 8  # generation and teacher forward batch


def fingerprint(plan: DataPlan, teacher_dir: Path, corpus_dir: Path) -> str:
    h = hashlib.sha256(json.dumps(asdict(plan), sort_keys=True).encode())
    h.update((teacher_dir / "config.json").read_bytes())
    for f in sorted(teacher_dir.glob("*.safetensors")) + sorted(corpus_dir.glob("*.txt.gz")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def corpus_sequences(tokenizer: PreTrainedTokenizerBase, corpus_dir: Path, n: int, seq_len: int, seed: int) -> list[list[int]]:
    """`n` windows of `seq_len` tokens from the training novels' passages, drawn with `seed`."""
    pool = workload.passages(corpus_dir, words=max(50, seq_len))  # ~1.3 tokens per word: a passage fills a window
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    out: list[list[int]] = []
    for i in order:
        if len(out) == n:
            break
        ids = tokenizer(pool[i], add_special_tokens=False)["input_ids"]
        if len(ids) >= seq_len:
            out.append(list(ids[:seq_len]))
    if len(out) < n:
        raise ValueError(f"the corpus holds only {len(out)} passages of {seq_len} tokens; asked for {n}")
    return out


def generated_sequences(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, corpus_dir: Path, plan: DataPlan) -> list[list[int]]:
    """Summary prompts continued by the teacher's greedy decoding, each cut to `seq_len` tokens."""
    from perfkit.engine import Engine

    if plan.generated == 0:
        return []
    prompts = workload.summary_prompts(tokenizer, corpus_dir, plan.generated, min(plan.prompt_tokens, plan.seq_len - 1), seed=plan.seed)
    engine = Engine(model, tokenizer, next(model.parameters()).device)
    out: list[list[int]] = []
    for start in range(0, len(prompts), plan.batch):
        batch = [list(p.input_ids) for p in prompts[start : start + plan.batch]]
        n_new = plan.seq_len - min(len(b) for b in batch)
        if n_new < 1:
            raise ValueError(f"seq_len {plan.seq_len}: no room for the teacher's continuation after a {min(map(len, batch))}-token prompt")
        gens = engine.generate_batch(batch, n_new, stop_at_eos=False)
        out.extend((b + list(g.token_ids))[: plan.seq_len] for b, g in zip(batch, gens))
    return out


@torch.inference_mode()
def teacher_topk(model: PreTrainedModel, ids: torch.Tensor, k: int, temperature: float, batch: int) -> tuple[torch.Tensor, ...]:
    """The teacher's top-k logits, their token ids and logsumexp(logits / T), at every position of `ids`."""
    device = next(model.parameters()).device
    values, index, lse = [], [], []
    for part in ids.split(batch):
        logits = model(input_ids=part.to(device), use_cache=False).logits.float().cpu()
        top = logits.topk(k, dim=-1)
        values.append(top.values)
        index.append(top.indices.to(torch.int32))
        lse.append(torch.logsumexp(logits / temperature, dim=-1))
    return torch.cat(values), torch.cat(index), torch.cat(lse)


def build(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, corpus_dir: Path, plan: DataPlan) -> dict[str, torch.Tensor]:
    seqs = generated_sequences(model, tokenizer, corpus_dir, plan)
    seqs += corpus_sequences(tokenizer, corpus_dir, plan.corpus, plan.seq_len, plan.seed)
    ids = torch.tensor(seqs, dtype=torch.long)
    values, index, lse = teacher_topk(model, ids, plan.top_k, plan.temperature, plan.batch)
    source = torch.tensor([0] * plan.generated + [1] * plan.corpus, dtype=torch.int8)  # 0 generated, 1 corpus
    return {"ids": ids, "top_values": values, "top_index": index, "lse": lse, "source": source}


def load_or_build(
    cache_dir: Path, teacher_dir: Path, corpus_dir: Path, plan: DataPlan, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> tuple[Path, dict[str, torch.Tensor], bool]:
    """The cached data for `plan` (built and written first if absent): (path, tensors, built now)."""
    path = cache_dir / f"teacher-{fingerprint(plan, teacher_dir, corpus_dir)}.pt"
    if path.is_file():
        return path, torch.load(path), False
    tensors = build(model, tokenizer, corpus_dir, plan)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({**tensors, "plan": json.dumps(asdict(plan))}, tmp)
    tmp.replace(path)
    return path, tensors, True


def batches(tensors: dict[str, torch.Tensor], temperature: float, seed: int = 0) -> Batches:
    return Batches(tensors["ids"], tensors["top_values"], tensors["top_index"], tensors["lse"], temperature, seed)
