"""Linear layers with their weights prepacked for oneDNN: the kernel inductor's `freezing` uses, without compiling.

On a CPU an eager `nn.Linear` calls the BLAS torch was built with (MKL on x86), which reads the weights in their
stored layout on every call. oneDNN can reorder a weight once into the blocked layout its kernels read fastest; the
compiled engine gets that from inductor's `freezing` (`mkldnn._reorder_linear_weight` and `_linear_pointwise`, the
two operators used here), at ~100 s of compile per server start. Sibling projections of one input (a layer's query,
key and value; its MLP's gate and up) are also stacked into one product. Measured on a 2-core AMD EPYC by
`bench/linear_kernels.py` (docs/engines.md): every linear layer of the default model once, fp32, 47 ms through
`nn.Linear`, 31 ms prepacked and 28 ms prepacked and fused at one row; 63, 32 and 29 ms at eight rows.

A packed layer computes what `nn.Linear` does (the same products, summed in another order: logits agree to float
rounding, not bit for bit), for inference only: it holds no parameters and no gradient flows through it. Layers
of other types (torch.ao's and torchao's quantized ones) and other dtypes are left as they are.
"""

from __future__ import annotations

import torch
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
ROWS_HINT = 2  # the batch size oneDNN blocks the layout for: at 1, 2 and 8 rows as fast as the exact size's layout
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # one input each, in Llama-style layers


class PackedLinear(nn.Module):
    """`nn.Linear`'s forward over a oneDNN-prepacked copy of its weight."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        with torch.no_grad():  # an opaque oneDNN tensor: kept as an attribute, outside state_dict and `.to()`
            self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)
        self.bias = None if bias is None else bias.detach().clone()  # out of the checkpoint's mapping

    @classmethod
    def of(cls, linear: nn.Linear) -> PackedLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed_weight, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class FusedProjections:
    """Sibling projections of one input (attention's query, key and value; the MLP's gate and up) as one packed
    product: one kernel call over their stacked weights reads them faster than three or two small ones.

    The model's own forward still calls each projection by name, one after the other on the same input tensor: each
    `ProjectionSlice` asks for its columns, the first call computes the whole product, the others take their part of
    it, and the product is let go once every slice has taken its part. A call on another tensor computes afresh, so
    any order of calls gives each projection's own output; the memo is one tuple, read once per call, so that two
    threads on one model would at worst compute twice, never take each other's columns. The memo knows its input by
    identity: a forward that changed the input in place between two sibling calls would get stale columns
    (transformers' Llama-style forwards do not). Siblings are found by name: a cross-attention layer, whose query
    reads another input than its key and value, would compute the whole product for each, correct but slower."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        with torch.no_grad():
            bias = None if linears[0].bias is None else torch.cat([lin.bias for lin in linears])
            self.product = PackedLinear(torch.cat([lin.weight for lin in linears]), bias)
        widths = [lin.out_features for lin in linears]
        self.bounds = [(sum(widths[:i]), sum(widths[: i + 1])) for i in range(len(widths))]
        self._memo: tuple[torch.Tensor, torch.Tensor, frozenset[int]] | None = None  # input, product, parts taken

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        memo = self._memo
        if memo is None or memo[0] is not x or index in memo[2]:
            memo = (x, self.product(x), frozenset())
        output, taken = memo[1], memo[2] | {index}
        self._memo = None if len(taken) == len(self.bounds) else (x, output, taken)
        start, end = self.bounds[index]
        return output[..., start:end]


class ProjectionSlice(nn.Module):
    """One projection's columns of a `FusedProjections` product, under the projection's own name."""

    def __init__(self, fused: FusedProjections, index: int) -> None:
        super().__init__()
        self.fused, self.index = fused, index
        self.in_features = fused.product.in_features
        self.out_features = fused.bounds[index][1] - fused.bounds[index][0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.part(x, self.index)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused={len(self.fused.bounds)}"


def packable(linear: nn.Module) -> bool:
    """A plain `nn.Linear` holding a plain tensor (torchao's quantized weights are tensor subclasses) on a CPU, in a
    dtype oneDNN packs, in a torch built with oneDNN."""
    return (
        type(linear) is nn.Linear
        and type(linear.weight.data) is torch.Tensor
        and linear.weight.device.type == "cpu"
        and linear.weight.dtype in PACKABLE_DTYPES
        and torch.backends.mkldnn.is_available()
    )


def _fusable(linears: list[nn.Module | None]) -> bool:
    first = linears[0]
    return all(
        packable(lin)
        and lin.in_features == first.in_features
        and lin.weight.dtype == first.weight.dtype
        and (lin.bias is None) == (first.bias is None)
        for lin in linears
    )


def prepack_linears(model: nn.Module, fuse: bool = True) -> int:
    """Replace every packable linear layer of `model`, in place, by a `PackedLinear`, or, with `fuse`, sibling
    projections of one input (`SIBLINGS`) by slices of one `FusedProjections`; the number of layers replaced.

    The model is for inference from here on. A weight tied to another module (the output layer to the token
    embedding) keeps its original beside the packed copy."""
    replaced = 0
    for parent in list(model.modules()):
        for names in SIBLINGS if fuse else ():
            linears = [getattr(parent, name, None) for name in names]
            if _fusable(linears):  # a missing name reads as None, which `packable` refuses
                fused = FusedProjections(linears)
                for index, name in enumerate(names):
                    setattr(parent, name, ProjectionSlice(fused, index))
                replaced += len(names)
        for name, child in list(parent.named_children()):
            if packable(child):
                setattr(parent, name, PackedLinear.of(child))
                replaced += 1
    if replaced:
        with torch.no_grad():  # copied out, so that no tensor left views the checkpoint's file mapping, which then goes:
            for param in model.parameters():  # else the packed copies sit beside all the weights as loaded (+538 MB)
                param.data = param.data.clone()
    return replaced
