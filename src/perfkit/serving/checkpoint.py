"""Which checkpoint the server loads: the model as saved, or a copy saved in the served precision (a cold-start lever).

`serving.dtype: bfloat16` over an fp32 checkpoint casts every weight at every start. With
`serving.prepared_checkpoint`, the launcher first saves the model once in the served precision
(safetensors, under `.cache/prepared/`, rebuilt when the source checkpoint changes), and the server
loads that copy as it is: half the bytes to read and no cast, the deployment step the article's
cold-start claim (C13) is about. The launcher prepares it before the server is spawned, so no
measured cold start pays for it; a server started by hand prepares it at load (a no-op once up to date).
"""

from __future__ import annotations

import json
from pathlib import Path

from perfkit.config import Config

PREPARED_DIR = ".cache/prepared"
SOURCE_FILE = "prepared-from.json"


def _source_stamp(source: Path) -> dict[str, object]:
    """What identifies the source checkpoint's weights: each safetensors file's size and modification time."""
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(source.glob("*.safetensors"))}


def served_checkpoint(cfg: Config) -> Path:
    """The checkpoint folder the server loads for `cfg`: `model.path`, or its copy in `serving.dtype` when
    `serving.prepared_checkpoint` is on (and the dtype is not the saved fp32)."""
    source = cfg.resolve(cfg.model.path)
    if not cfg.serving.prepared_checkpoint or cfg.serving.dtype == "float32":
        return source
    return cfg.resolve(PREPARED_DIR) / f"{source.name}-{cfg.serving.dtype}"


def prepare_checkpoint(cfg: Config) -> Path:
    """Save the served copy `served_checkpoint` names, unless an up-to-date one is there; returns its folder."""
    source, target = cfg.resolve(cfg.model.path), served_checkpoint(cfg)
    if target == source:
        return source
    stamp = {"source": str(source), "files": _source_stamp(source), "dtype": cfg.serving.dtype}
    marker = target / SOURCE_FILE
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return target
    from perfkit.models import load_causal_lm

    model, tokenizer = load_causal_lm(source, "cpu", cfg.serving.dtype)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    marker.write_text(json.dumps(stamp))
    return target
