"""Random weights of a shipped shape: a loadable checkpoint of the declared shape and size, marked as random."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from perfkit import model_shapes
from perfkit.model_shapes import Shape, ShapeError

TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 256,
}
# embedding 49152 x 64, per layer: q 64x64 + k,v 64x32 each + o 64x64 + mlp 3 x 64x128 + 2 norms of 64; the final norm
TINY_PARAMETERS = 49152 * 64 + 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


def _shape(tmp_path: Path, parameters: int = TINY_PARAMETERS, **config) -> Shape:
    folder = tmp_path / "shape"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY | config))
    return Shape("tiny", folder, parameters)


def test_the_written_checkpoint_loads_with_the_declared_shape_and_parameters(tmp_path, tiny_model_dir):
    from perfkit.models import load_causal_lm

    out = model_shapes.write_random(_shape(tmp_path), tmp_path / "model", tiny_model_dir, seed=3)
    model, tokenizer = load_causal_lm(out)
    assert model.num_parameters() == TINY_PARAMETERS
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (2, 64, 49152)
    assert len(tokenizer) == model.config.vocab_size  # every id the model emits decodes
    assert model_shapes.is_random(out) and not model_shapes.is_random(tiny_model_dir)


def test_the_same_seed_writes_the_same_weights(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    spec = _shape(tmp_path)
    a = load_file(model_shapes.write_random(spec, tmp_path / "a", tiny_model_dir, seed=1) / "model.safetensors")
    b = load_file(model_shapes.write_random(spec, tmp_path / "b", tiny_model_dir, seed=1) / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_a_count_other_than_the_declared_one_is_refused(tmp_path, tiny_model_dir):
    with pytest.raises(ShapeError, match="declares 1,000"):
        model_shapes.write_random(_shape(tmp_path, parameters=1000), tmp_path / "m", tiny_model_dir)
    assert not (tmp_path / "m").exists()


def test_a_tokenizer_whose_vocabulary_differs_is_refused(tmp_path, tiny_model_dir):
    with pytest.raises(ShapeError, match="vocab_size 32000 but the tokenizer"):
        model_shapes.write_random(_shape(tmp_path, vocab_size=32000), tmp_path / "m", tiny_model_dir)


def test_every_shipped_shape_builds_to_its_declared_parameter_count():
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    shapes = model_shapes.shapes(REPO)
    assert {"smollm2-135m", "llama-1b", "llama-8b"} <= set(shapes)
    for spec in shapes.values():
        config = AutoConfig.from_pretrained(spec.config_dir)
        with torch.device("meta"):  # no memory: an 8B shape is counted, not built
            model = (AutoModelForCausalLM if spec.kind == "causal-lm" else AutoModel).from_config(config)
        assert model.num_parameters() == spec.parameters, spec.name
        if spec.kind == "causal-lm":
            assert config.vocab_size == 49152, spec.name


def test_the_llama_shapes_are_about_the_sizes_their_names_say():
    declared = yaml.safe_load((REPO / model_shapes.SHAPES_DIR / "shapes.yaml").read_text())
    assert 0.9e9 < declared["llama-1b"]["parameters"] < 1.3e9
    assert 7e9 < declared["llama-8b"]["parameters"] < 8.5e9


def test_an_unknown_shape_names_the_shipped_ones():
    with pytest.raises(ShapeError, match="llama-1b"):
        model_shapes.shape(REPO, "llama-70b")


def test_provenance_marks_random_weights_and_the_page_says_their_quality_means_nothing(tmp_path, tiny_model_dir):
    from perfkit import config, provenance, stages

    out = model_shapes.write_random(_shape(tmp_path), tmp_path / "model", tiny_model_dir)
    cfg = config.override(config.load("baseline", root=REPO), {"model.path": str(out)})
    prov = provenance.begin(cfg, stages.get("baseline"))
    assert prov["random_weights"] is True
    assert any("quality figures are not meaningful" in n for n in provenance.notes(prov))
    real = provenance.begin(config.override(cfg, {"model.path": str(tiny_model_dir)}), stages.get("baseline"))
    assert real["random_weights"] is False and not any("random" in n for n in provenance.notes(real))
