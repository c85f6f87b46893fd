"""Linear layers with their weights prepacked for oneDNN: the kernel inductor's `freezing` uses, without compiling.

On a CPU an eager `nn.Linear` calls the BLAS torch was built with (MKL on x86), which reads the weights in their
stored layout on every call. oneDNN can reorder a weight once into the blocked layout its kernels read fastest; the
compiled engine gets that from inductor's `freezing` (`mkldnn._reorder_linear_weight` and `_linear_pointwise`, the
two operators used here), at ~100 s of compile per server start. Measured on a 2-core AMD EPYC (docs/engines.md):
every linear layer of the default model once, fp32, 48 ms through `nn.Linear` against 30 ms prepacked at one row,
77 against 30 at two rows, 60 against 32 at eight; a 64-token prefill's 1.8x faster, bf16 1.1-1.8x.

A packed layer computes what `nn.Linear` does (the same products, summed in another order: logits agree to float
rounding, not bit for bit), for inference only: it holds no parameters and no gradient flows through it. Layers
of other types (torch.ao's and torchao's quantized ones) and other dtypes are left as they are.
"""

from __future__ import annotations

import torch
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
ROWS_HINT = 2  # the batch size oneDNN blocks the layout for: at 1, 2 and 8 rows as fast as the exact size's layout


class PackedLinear(nn.Module):
    """`nn.Linear`'s forward over a oneDNN-prepacked copy of its weight."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():  # an opaque oneDNN tensor: kept as an attribute, outside state_dict and `.to()`
            self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), ROWS_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()  # out of the checkpoint's mapping

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed_weight, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


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


def prepack_linears(model: nn.Module) -> int:
    """Replace every packable linear layer of `model`, in place, by a `PackedLinear`; the number replaced.

    The model is for inference from here on. A weight tied to another module (the output layer to the token
    embedding) keeps its original beside the packed copy."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if packable(child):
                setattr(parent, name, PackedLinear(child))
                replaced += 1
    if replaced:
        with torch.no_grad():  # copied out, so that no tensor left views the checkpoint's file mapping, which then goes:
            for param in model.parameters():  # else the packed copies sit beside all the weights as loaded (+538 MB)
                param.data = param.data.clone()
    return replaced
