"""Tensor parallelism for Llama-architecture models: a manual column/row split over torch.distributed.

Each of N ranks holds a slice of every decoder layer (Megatron-LM's split). Attention: q, k and v
are split by output column, whole KV groups per rank (a KV head with the query heads that share
it), and o_proj by input row; the MLP: gate and up by column, down by row. A column-split layer
needs no communication (each rank computes its own heads or its own part of the intermediate
activation); a row-split layer leaves each rank with a partial sum of the full hidden state, so one
`dist.all_reduce` follows o_proj and one follows down_proj: two per layer, `hidden x rows x dtype`
bytes each. Norms are replicated. The embedding and the tied lm_head are either replicated, or split
by vocabulary: each rank then looks up only its rows (one more all-reduce per step) and computes its
share of the logits, which an all-gather joins (the engine picks greedily from full logits, and the
exactness check compares them).

Why a manual split, not DTensor's `parallelize_module` or transformers' `tp_plan`: the default
model has 9 query and 3 KV heads, so only N = 1 or 3 divide evenly, and both of those fail at N = 2
with a reshape error (transformers does not even check divisibility when loading); here
`sharding.uneven_heads` splits whole KV groups as evenly as possible (2 + 1 KV heads, 6 + 3 query
heads at N = 2; the attention module's `view(..., -1, head_dim)` takes any head count, and the
query-per-KV ratio is unchanged). DTensor's row-wise layers all-reduce asynchronously, so a clock
around a module times the launch; here every collective goes through `Comm`, which times it and
counts its bytes. And the split decides what each rank reads from the checkpoint: `load_sharded`
builds the model on the meta device and reads only the rank's slices with safetensors'
`get_slice` (the remedy for a model that does not fit one device), never the full tensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from perfkit.errors import PerfkitError
from perfkit.hardware import now

Embedding = Literal["replicated", "vocab"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ShardingError(PerfkitError, ValueError):
    """A split this model cannot take; the message names the allowed rank counts."""


def split_even(total: int, parts: int) -> list[tuple[int, int]]:
    """`total` items cut into `parts` contiguous ranges as even as possible (the larger ones first)."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def allowed_ranks(kv_heads: int, uneven_heads: bool) -> list[int]:
    """Rank counts the KV heads allow: their divisors, or every count up to one KV head per rank."""
    return list(range(1, kv_heads + 1)) if uneven_heads else [n for n in range(1, kv_heads + 1) if kv_heads % n == 0]


@dataclass(frozen=True)
class Plan:
    """What rank `rank` of `world` holds: its KV heads, query heads, MLP columns and vocabulary rows."""

    world: int
    rank: int
    head_dim: int
    kv_heads: tuple[int, int]
    q_heads: tuple[int, int]
    mlp: tuple[int, int]
    vocab: tuple[int, int]
    embedding: Embedding
    total_kv_heads: int
    total_mlp: int
    total_vocab: int

    @classmethod
    def build(cls, config: Any, world: int, rank: int, *, uneven_heads: bool = False, embedding: Embedding = "replicated") -> Plan:
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        if world not in allowed_ranks(kv, uneven_heads):
            allowed = ", ".join(map(str, allowed_ranks(kv, uneven_heads)))
            hint = "" if uneven_heads else "; or set sharding.uneven_heads: true to split whole KV groups unevenly"
            raise ShardingError(
                f"sharding: {world} ranks cannot split the model's {kv} KV heads ({heads} query heads); "
                f"allowed rank counts: {allowed}{hint}"
            )
        if embedding not in ("replicated", "vocab"):
            raise ShardingError(f"sharding.embedding = {embedding!r}; allowed: replicated, vocab")
        group = heads // kv
        ka, kb = split_even(kv, world)[rank]
        return cls(
            world=world,
            rank=rank,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            kv_heads=(ka, kb),
            q_heads=(ka * group, kb * group),
            mlp=split_even(config.intermediate_size, world)[rank],
            vocab=split_even(config.vocab_size, world)[rank] if embedding == "vocab" else (0, config.vocab_size),
            embedding=embedding,
            total_kv_heads=kv,
            total_mlp=config.intermediate_size,
            total_vocab=config.vocab_size,
        )

    def source_slice(self, name: str) -> tuple[int, int, int] | None:
        """(dim, start, stop) of checkpoint tensor `name` this rank holds; None for a replicated tensor."""
        d = self.head_dim
        kind = name.rsplit(".", 1)[-1]
        if ".self_attn.q_proj." in name:
            return 0, self.q_heads[0] * d, self.q_heads[1] * d
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            return 0, self.kv_heads[0] * d, self.kv_heads[1] * d
        if ".self_attn.o_proj.weight" in name:
            return 1, self.q_heads[0] * d, self.q_heads[1] * d
        if ".mlp.gate_proj." in name or ".mlp.up_proj." in name:
            return 0, *self.mlp
        if ".mlp.down_proj.weight" in name:
            return 1, *self.mlp
        if self.embedding == "vocab" and kind == "weight" and (name.endswith("embed_tokens.weight") or name == "lm_head.weight"):
            return 0, *self.vocab
        return None  # norms, row-split biases (added once, after the all-reduce), a replicated embedding

    def imbalance(self) -> float:
        """Largest rank's share of the KV heads over the mean share (1.0 when even)."""
        largest = max(b - a for a, b in split_even(self.total_kv_heads, self.world))
        return largest * self.world / self.total_kv_heads


@dataclass
class Comm:
    """Every collective of the sharded model: timed (seconds spent inside), counted, and its bytes summed.

    The clock is `hardware.now`, which synchronizes CUDA: on NCCL a timed collective therefore stops
    overlapping; `timed=False` keeps the counts and drops the clock.
    """

    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timed: bool = True
    calls: int = 0
    seconds: float = 0.0
    bytes: int = 0

    @classmethod
    def current(cls, device: torch.device, timed: bool = True) -> Comm:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return cls(world=world, device=torch.device(device), timed=timed)

    def snapshot(self) -> tuple[int, float, int]:
        return self.calls, self.seconds, self.bytes

    def _account(self, t0: float, tensor: torch.Tensor) -> None:
        self.calls += 1
        self.bytes += tensor.numel() * tensor.element_size()
        if self.timed:
            self.seconds += now(self.device) - t0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place."""
        if self.world == 1:
            return tensor
        t0 = now(self.device) if self.timed else 0.0
        dist.all_reduce(tensor)
        self._account(t0, tensor)
        return tensor

    def all_gather_last(self, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate each rank's `tensor` along the last dim; rank r's holds `sizes[r]` columns."""
        if self.world == 1:
            return tensor
        t0 = now(self.device) if self.timed else 0.0
        width = max(sizes)
        padded = F.pad(tensor, (0, width - tensor.shape[-1])).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        self._account(t0, padded)
        return torch.cat([p[..., :n] for p, n in zip(parts, sizes)], dim=-1)


class RowParallelLinear(nn.Module):
    """A Linear split by input rows: local matmul, all-reduce of the partial sums, then the (whole) bias."""

    def __init__(self, in_local: int, out_features: int, bias: bool, comm: Comm, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_local, dtype=dtype, device="meta"), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device="meta"), requires_grad=False) if bias else None
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.comm.all_reduce(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """Embedding rows [start, stop) of the vocabulary: others' tokens look up zeros, an all-reduce fills them in."""

    def __init__(self, plan: Plan, hidden: int, comm: Comm, dtype: torch.dtype) -> None:
        super().__init__()
        self.start, self.stop = plan.vocab
        self.weight = nn.Parameter(torch.empty(self.stop - self.start, hidden, dtype=dtype, device="meta"), requires_grad=False)
        self.comm = comm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mine = (ids >= self.start) & (ids < self.stop)
        out = F.embedding((ids - self.start).clamp(0, self.stop - self.start - 1), self.weight)
        return self.comm.all_reduce(out * mine.unsqueeze(-1).to(out.dtype))


class VocabParallelHead(nn.Module):
    """lm_head rows [start, stop): each rank's logits for its vocabulary, joined by an all-gather."""

    def __init__(self, weight: nn.Parameter, sizes: list[int], comm: Comm) -> None:
        super().__init__()
        self.weight = weight  # tied to the embedding's slice when the checkpoint ties them
        self.sizes = sizes
        self.comm = comm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.comm.all_gather_last(F.linear(hidden, self.weight), self.sizes)


def _meta_linear(in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias, device="meta", dtype=dtype).requires_grad_(False)


def shard_modules(model: nn.Module, plan: Plan, comm: Comm, dtype: torch.dtype) -> None:
    """Swap the meta model's layers for this rank's column-, row- and vocabulary-split ones (in place)."""
    config = model.config
    hidden, d = config.hidden_size, plan.head_dim
    q, kv, mlp = plan.q_heads[1] - plan.q_heads[0], plan.kv_heads[1] - plan.kv_heads[0], plan.mlp[1] - plan.mlp[0]
    for layer in model.model.layers:
        attn, ffn = layer.self_attn, layer.mlp
        bias = attn.q_proj.bias is not None
        attn.q_proj = _meta_linear(hidden, q * d, bias, dtype)
        attn.k_proj = _meta_linear(hidden, kv * d, bias, dtype)
        attn.v_proj = _meta_linear(hidden, kv * d, bias, dtype)
        attn.o_proj = RowParallelLinear(q * d, hidden, attn.o_proj.bias is not None, comm, dtype)
        mlp_bias = ffn.gate_proj.bias is not None
        ffn.gate_proj = _meta_linear(hidden, mlp, mlp_bias, dtype)
        ffn.up_proj = _meta_linear(hidden, mlp, mlp_bias, dtype)
        ffn.down_proj = RowParallelLinear(mlp, hidden, ffn.down_proj.bias is not None, comm, dtype)
    if plan.embedding == "vocab":
        model.model.embed_tokens = VocabParallelEmbedding(plan, hidden, comm, dtype)
        sizes = [b - a for a, b in split_even(plan.total_vocab, plan.world)]
        head = nn.Parameter(torch.empty(plan.vocab[1] - plan.vocab[0], hidden, dtype=dtype, device="meta"), requires_grad=False)
        model.lm_head = VocabParallelHead(head, sizes, comm)


def checkpoint_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the index of a sharded checkpoint or the single file."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return {name: model_dir / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise ShardingError(f"{model_dir}: no model.safetensors(.index.json); sharded loading reads safetensors only")
    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}


@dataclass(frozen=True)
class LoadReport:
    """What a rank read: bytes of its slices against the checkpoint's bytes, and each tensor's read shape."""

    bytes_read: int
    checkpoint_bytes: int
    shapes: dict[str, tuple[int, ...]]


def _read(files: dict[str, Path], plan: Plan, dtype: torch.dtype, device: torch.device) -> Iterator[tuple[str, torch.Tensor, int]]:
    """(name, this rank's slice, full tensor bytes) for every checkpoint tensor, file by file."""
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for name in names:
                piece = f.get_slice(name)
                shape = piece.get_shape()
                cut = plan.source_slice(name)
                if cut is None:
                    tensor = piece[:]
                else:
                    dim, start, stop = cut
                    tensor = piece[start:stop] if dim == 0 else piece[:, start:stop]
                full = tensor.element_size()
                for n in shape:
                    full *= n
                # copy=True: safetensors hands out views of the file's mmap; the rank's weights must be its own
                # memory (as on a GPU), and only the slice's bytes of it
                yield name, tensor.to(device=device, dtype=dtype, copy=True), full


def load_sharded(
    model_dir: Path, plan: Plan, comm: Comm, *, device: torch.device | str = "cpu", dtype: str = "float32"
) -> tuple[nn.Module, LoadReport]:
    """This rank's part of the checkpoint in `model_dir`: built on meta, filled from its slices only."""
    from transformers import AutoConfig, AutoModelForCausalLM

    device, torch_dtype = torch.device(device), DTYPES[dtype]
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    shard_modules(model, plan, comm, torch_dtype)
    state, read, full_bytes, shapes = {}, 0, 0, {}
    for name, tensor, full in _read(checkpoint_files(Path(model_dir)), plan, torch_dtype, device):
        state[name] = tensor
        read += tensor.numel() * tensor.element_size()
        full_bytes += full
        shapes[name] = tuple(tensor.shape)
    tied = bool(getattr(config, "tie_word_embeddings", False)) or "lm_head.weight" not in state
    if tied:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise ShardingError(f"{model_dir}: checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if tied:  # load_state_dict(assign=True) replaced the embedding's Parameter: tie the head to the new one
        model.lm_head.weight = model.model.embed_tokens.weight
    rotary = model.model.rotary_emb  # its inv_freq is a non-persistent buffer: not in the checkpoint, rebuilt
    model.model.rotary_emb = type(rotary)(config=model.config).to(device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ShardingError(f"tensors still on the meta device after loading: {left[:5]}")
    return model.eval(), LoadReport(read, full_bytes, shapes)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers, each storage once (a tied head counts once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def allreduce_bytes_per_token(config: Any, plan: Plan, dtype: str = "float32") -> int:
    """From shapes: two all-reduces per layer of `hidden` values per token (+1 for a vocabulary-split embedding)."""
    per_call = config.hidden_size * torch.empty(0, dtype=DTYPES[dtype]).element_size()
    calls = 2 * config.num_hidden_layers + (1 if plan.embedding == "vocab" else 0)
    return calls * per_call if plan.world > 1 else 0
