"""The real default model: converted from the shipped GGUF and loaded like a user's checkpoint."""

import pytest

from perfkit.engine import Engine
from perfkit.models import ModelNotFoundError, load_causal_lm, load_tokenizer
from perfkit.prepare import convert_default_model
from perfkit.workload import chat_ids


@pytest.mark.slow
def test_default_model_converts_loads_and_answers(tmp_path):
    out = convert_default_model(tmp_path / "smollm2")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    model, tokenizer = load_causal_lm(out)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer.padding_side == "left"
    engine = Engine(model, tokenizer, "cpu")
    ids = chat_ids(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in engine.generate(ids, 12).text


def test_missing_model_dir_names_the_key(tmp_path):
    for load in (load_causal_lm, load_tokenizer):  # a client building prompts gets the same message as the engine
        with pytest.raises(ModelNotFoundError, match=r"model.path = .*no such directory.*perfkit prepare"):
            load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_causal_lm(tmp_path / "empty")
