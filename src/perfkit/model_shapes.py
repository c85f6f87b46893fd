"""Models of realistic shape without downloading weights: seeded random weights of a shipped architecture.

`data/model-shapes/NAME/config.json` holds an architecture (the default model's, a ~1B and a ~8B
Llama-style shape, and the embedding model's) and `shapes.yaml` the parameter count each must have.
`write_random` builds the model from that config with a fixed seed, checks its parameter count, and
saves it with `save_pretrained` (safetensors) beside a tokenizer whose vocabulary is the model's, so
every id the model emits decodes. The folder then loads through the same `from_pretrained(local_dir)`
path as any checkpoint. It is marked (`SOURCE.json`: `random_weights`), and provenance carries the
mark: speed, memory and batching on it are the real shape's; its quality figures are not meaningful.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from perfkit.errors import PerfkitError

SHAPES_DIR = "data/model-shapes"
SOURCE_FILE = "SOURCE.json"
RANDOM_QUALITY = "not meaningful: random weights"


class ShapeError(PerfkitError, ValueError):
    """An unknown shape, or a written model that does not match its declaration."""


@dataclass(frozen=True)
class Shape:
    name: str
    config_dir: Path
    parameters: int
    kind: Literal["causal-lm", "embedding"] = "causal-lm"
    description: str = ""


def shapes(root: Path) -> dict[str, Shape]:
    """Every shipped shape by name."""
    folder = root / SHAPES_DIR
    declared = yaml.safe_load((folder / "shapes.yaml").read_text())
    return {
        name: Shape(name, folder / name, int(d["parameters"]), d.get("kind", "causal-lm"), d.get("description", ""))
        for name, d in declared.items()
    }


def shape(root: Path, name: str) -> Shape:
    found = shapes(root)
    if name not in found:
        raise ShapeError(f"--config {name!r}: no such shape; shapes: {', '.join(found)}")
    return found[name]


def is_random(model_dir: Path | str) -> bool:
    """Whether a checkpoint folder holds random weights written here (its SOURCE.json says so)."""
    source = Path(model_dir) / SOURCE_FILE
    try:
        return bool(json.loads(source.read_text()).get("random_weights"))
    except (OSError, ValueError):
        return False


def write_random(spec: Shape, out_dir: Path, tokenizer_dir: Path, *, seed: int = 0, dtype: str = "float32", device: str = "cpu") -> Path:
    """Seeded random weights of `spec` in `out_dir` (config, safetensors, `tokenizer_dir`'s tokenizer, SOURCE.json).

    `device="cuda"` initialises on the GPU (seconds for an 8B shape, where the CPU takes minutes); the file is the same
    format either way. Refuses a tokenizer whose vocabulary differs from the model's, and a parameter count that
    differs from the declared one.
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(spec.config_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    if len(tokenizer) != config.vocab_size:
        raise ShapeError(
            f"{spec.name}: vocab_size {config.vocab_size} but the tokenizer in {tokenizer_dir} has "
            f"{len(tokenizer)} ids: every id the model emits must decode"
        )
    auto = AutoModelForCausalLM if spec.kind == "causal-lm" else AutoModel
    torch.manual_seed(seed)
    with torch.device(device):
        model = auto.from_config(config, dtype=getattr(torch, dtype)).eval()
    count = model.num_parameters()
    if count != spec.parameters:
        raise ShapeError(f"{spec.name}: built {count:,} parameters, shapes.yaml declares {spec.parameters:,}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if spec.kind == "causal-lm":
        tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out_dir)
    source = {"random_weights": True, "shape": spec.name, "seed": seed, "dtype": dtype, "parameters": count, "quality": RANDOM_QUALITY}
    (out_dir / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return out_dir
