"""Depth pruning: a student that is the teacher with some decoder layers removed.

A decoder layer adds an update to the residual stream; where the update barely turns the stream,
the layer can go at little cost (ShortGPT's "block influence"). The *importance* of layer i is the
angular distance between its input and output hidden states, arccos(cos(x_in, x_out)) / pi,
averaged over tokens of text the student will not be evaluated on. It is taken with forward hooks
on the layers themselves: Hugging Face's `hidden_states[-1]` is taken after the final norm, which
would credit the last layer with the norm's rescaling.

Two ways to choose the layers a student keeps:
- `evenly`: layers 0, 1 and the last always, the rest spread evenly between them;
- `importance`: the `keep` layers with the largest angular distance.

Removing layers in transformers 5 needs three edits besides slicing `model.layers`: each kept
attention's `layer_idx` is renumbered (the KV cache is indexed by it, so `generate` fails
otherwise), and `config.num_hidden_layers` and `config.layer_types` (where present) are cut to
match (else the saved config lies and `from_pretrained` rebuilds the wrong model).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

Selection = Literal["evenly", "importance"]


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    return model.get_decoder().layers


def evenly(n_layers: int, keep: int) -> list[int]:
    """Layers 0, 1 and the last, and the rest spread evenly between layer 1 and the last."""
    if not 1 <= keep <= n_layers:
        raise ValueError(f"keep {keep} of {n_layers} layers: must be 1..{n_layers}")
    if keep <= 3:
        return sorted(set([0, n_layers - 1, 1][:keep]))
    inner = keep - 3  # between layer 1 and the last, exclusive
    span = n_layers - 3  # candidates 2 .. n_layers - 2
    picks = [2 + round((i + 1) * (span + 1) / (inner + 1)) - 1 for i in range(inner)]
    return sorted({0, 1, n_layers - 1, *picks})


@torch.inference_mode()
def layer_importance(model: PreTrainedModel, sequences: Iterable[Sequence[int]]) -> list[float]:
    """Mean angular distance (0..1) between each decoder layer's input and output, over every token."""
    layers = decoder_layers(model)
    totals = [0.0] * len(layers)
    count = 0

    def hook(index: int):
        def record(_module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            x_in = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            x_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1).clamp(-1.0, 1.0)
            totals[index] += float((torch.arccos(cos) / math.pi).sum())

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    try:
        for ids in sequences:
            model(input_ids=torch.tensor([list(ids)], device=device), use_cache=False)
            count += len(ids)
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise ValueError("layer_importance needs at least one token")
    return [t / count for t in totals]


def by_importance(importance: Sequence[float], keep: int) -> list[int]:
    """The `keep` layers whose input-to-output angular distance is largest, in model order."""
    if not 1 <= keep <= len(importance):
        raise ValueError(f"keep {keep} of {len(importance)} layers: must be 1..{len(importance)}")
    ranked = sorted(range(len(importance)), key=lambda i: importance[i], reverse=True)
    return sorted(ranked[:keep])


def drop_layers(model: PreTrainedModel, keep: Sequence[int]) -> PreTrainedModel:
    """A copy of `model` holding only the decoder layers `keep` (teacher weights, bit for bit)."""
    n = len(decoder_layers(model))
    kept = sorted(set(keep))
    if not kept or kept[0] < 0 or kept[-1] >= n:
        raise ValueError(f"layers to keep {list(keep)}: must be a non-empty subset of 0..{n - 1}")
    student = copy.deepcopy(model)
    layers = decoder_layers(student)
    student.get_decoder().layers = nn.ModuleList(layers[i] for i in kept)
    for new_index, layer in enumerate(decoder_layers(student)):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_index
    cfg = student.config
    cfg.num_hidden_layers = len(kept)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    return student
