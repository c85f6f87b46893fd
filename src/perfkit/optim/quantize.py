"""Quantization schemes: one function per scheme, one registry line each.

Every scheme starts from the same fp32 checkpoint and returns a model the engine can run.

- Lower-precision floats (`bf16`, `fp16`) halve every weight. On a CPU without native bf16
  instructions the matmuls are emulated and run several times slower than fp32; fp16 matmuls are
  only worth running on CUDA, so the scheme refuses elsewhere.
- Dynamic INT8 (`torch.ao.quantization.quantize_dynamic`, CPU only) stores each `nn.Linear` weight as
  int8 with a per-channel scale and quantizes the *activations* on the fly, per tensor, with one
  scale taken from their absolute maximum. A layer whose inputs carry a few huge outliers (on
  SmolLM2 the inputs of `mlp.down_proj` reach the thousands) then loses the resolution of all its
  ordinary values, which is why `int8-dynamic-skip-outliers` keeps the modules named in
  `quantization.skip_modules` in fp32.
- Weight-only INT8/INT4 (torchao `Int8WeightOnlyConfig` / `Int4WeightOnlyConfig`, optimum-quanto
  `qint8` / `qint4`) keep activations in floating point and dequantize the weights inside the
  matmul: memory falls, quality barely moves, and speed depends on whether a fused kernel exists
  for the device (torchao's int4 kernel needs CUDA here).

A scheme that cannot run on the device raises `SchemeUnavailable` (or whatever its library raises);
the experiment reports it as skipped with the exception's text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class SchemeUnavailable(RuntimeError):
    """A scheme that cannot run on this device or build; the message says why."""


@dataclass(frozen=True)
class Target:
    """Where the quantized model will run, and which modules a skipping scheme keeps in fp32."""

    device: torch.device
    skip_modules: tuple[str, ...] = ()


def _require(device: torch.device, kind: str, scheme: str) -> None:
    if device.type != kind:
        raise SchemeUnavailable(f"{scheme} needs a {kind.upper()} device; this run is on {device.type}")


def fp32(model: nn.Module, target: Target) -> nn.Module:
    return model


def bf16(model: nn.Module, target: Target) -> nn.Module:
    return model.to(torch.bfloat16)


def fp16(model: nn.Module, target: Target) -> nn.Module:
    _require(target.device, "cuda", "fp16")
    return model.to(torch.float16)


def int8_dynamic(model: nn.Module, target: Target, skip: tuple[str, ...] = ()) -> nn.Module:
    """Dynamic INT8 on every `nn.Linear` whose qualified name does not end with one of `skip`."""
    _require(target.device, "cpu", "int8-dynamic (torch.ao quantize_dynamic)")
    names = {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not name.endswith(skip)}
    if skip:
        # The tied lm_head shares the embedding's tensor: quantizing it must not touch the embedding.
        model = _untie_unless_kept(model, skip)
    return torch.ao.quantization.quantize_dynamic(model, names, dtype=torch.qint8, inplace=False)


def int8_dynamic_skip_outliers(model: nn.Module, target: Target) -> nn.Module:
    return int8_dynamic(model, target, skip=target.skip_modules)


def _untie_unless_kept(model: nn.Module, skip: tuple[str, ...]) -> nn.Module:
    head = getattr(model, "lm_head", None)
    if head is not None and not "lm_head".endswith(skip):
        head.weight = nn.Parameter(head.weight.detach().clone())
    return model


def int8_weight_only_torchao(model: nn.Module, target: Target) -> nn.Module:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig())
    return model


def int4_weight_only_torchao(model: nn.Module, target: Target) -> nn.Module:
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    _require(target.device, "cuda", "int4-weight-only-torchao (torchao's int4 tile-packed kernel)")
    quantize_(model.to(torch.bfloat16), Int4WeightOnlyConfig(group_size=128))
    return model


def _quanto(model: nn.Module, bits: str) -> nn.Module:
    from optimum import quanto

    # Frozen under inference mode, so that the engine's inference-mode forward can view the packed
    # weights (qint4's transpose otherwise fails: "Cannot set version_counter for inference tensor").
    with torch.inference_mode():
        quanto.quantize(model, weights=getattr(quanto, bits))
        quanto.freeze(model)
    return model


def quanto_qint8(model: nn.Module, target: Target) -> nn.Module:
    return _quanto(model, "qint8")


def quanto_qint4(model: nn.Module, target: Target) -> nn.Module:
    return _quanto(model, "qint4")


SCHEMES: dict[str, Callable[[nn.Module, Target], nn.Module]] = {
    "fp32": fp32,
    "bf16": bf16,
    "fp16": fp16,
    "int8-dynamic": int8_dynamic,
    "int8-dynamic-skip-outliers": int8_dynamic_skip_outliers,
    "int8-weight-only-torchao": int8_weight_only_torchao,
    "quanto-qint8": quanto_qint8,
    "quanto-qint4": quanto_qint4,
    "int4-weight-only-torchao": int4_weight_only_torchao,
}


def apply(name: str, model: nn.Module, target: Target) -> nn.Module:
    """`SCHEMES[name]` on `model` (which it may change in place: pass a copy to keep the original)."""
    if name not in SCHEMES:
        raise KeyError(f"unknown scheme {name!r}; allowed: {', '.join(SCHEMES)}")
    return SCHEMES[name](model, target).eval()


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors, each underlying storage counted once (tied weights count once).

    Quantized modules keep their weights outside `parameters()` (torch.ao packs them; torchao and
    quanto wrap them in tensor subclasses), so the walk goes through the state dict and unwraps
    packed and subclass tensors down to the plain tensors that hold the bytes.
    """
    # All leaves stay referenced until counted: unpacking makes temporaries, whose addresses a
    # freed-and-reused allocation would otherwise make look shared.
    leaves = [t for value in model.state_dict(keep_vars=True).values() for t in _leaves(value)]
    seen: dict[tuple[int, str], int] = {}
    for t in leaves:
        key = (t.untyped_storage().data_ptr(), str(t.device))
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
    return sum(seen.values())


def _leaves(value: object) -> list[torch.Tensor]:
    if isinstance(value, tuple | list):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, torch.ScriptObject) or type(value).__name__ == "LinearPackedParamsBase":
        return _leaves(value.__getstate__())  # type: ignore[attr-defined]
    if not isinstance(value, torch.Tensor):
        return []
    if hasattr(value, "__tensor_flatten__"):
        names, _ = value.__tensor_flatten__()
        return [leaf for n in names for leaf in _leaves(getattr(value, n))]
    if value.is_quantized:
        scales = value.q_per_channel_scales() if value.qscheme() in _PER_CHANNEL else None
        zeros = value.q_per_channel_zero_points() if scales is not None else None
        return [value.int_repr()] + ([scales, zeros] if scales is not None else [])
    return [value]


_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)
