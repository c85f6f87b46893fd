"""Linear weights prepacked for oneDNN: the same tokens and logits as torch's nn.Linear, only where it applies."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from perfkit.engine import Engine
from perfkit.models import load_causal_lm
from perfkit.optim import quantize
from perfkit.prepack import FusedProjections, PackedLinear, ProjectionSlice, prepack_linears

PROMPTS = ("one", "a much longer second prompt, with commas and more words")


def _kinds(model: nn.Module) -> tuple[int, int, int]:
    """(torch's linear layers, packed ones, slices of fused projections)."""
    modules = list(model.modules())
    return tuple(sum(type(m) is kind for m in modules) for kind in (nn.Linear, PackedLinear, ProjectionSlice))


@pytest.mark.parametrize("kv_cache", ["dynamic", "slots"])
def test_a_prepacked_engine_gives_the_unpacked_ones_tokens_and_logits(tiny_model_dir, kv_cache):
    plain, tokenizer = load_causal_lm(tiny_model_dir)
    packed, _ = load_causal_lm(tiny_model_dir)
    assert _kinds(plain) == (15, 0, 0)  # 7 linear layers in each of 2 decoder layers, and the output layer
    plain_engine = Engine(plain, tokenizer, "cpu", kv_cache)
    packed_engine = Engine(packed, tokenizer, "cpu", kv_cache, prepack=True)
    assert packed_engine.prepacked and _kinds(packed) == (0, 5, 10)  # q, k, v and gate, up fused in each layer
    prompts = [plain_engine.encode(p) for p in PROMPTS]
    with torch.inference_mode():
        ids = torch.tensor([prompts[1]])
        torch.testing.assert_close(packed(ids).logits, plain(ids).logits, atol=1e-5, rtol=1e-4)
        expected = [g.token_ids for g in plain_engine.generate_batch(prompts, 12, stop_at_eos=False)]
        assert [g.token_ids for g in packed_engine.generate_batch(prompts, 12, stop_at_eos=False)] == expected


def test_the_output_layer_is_packed_beside_the_embedding_it_is_tied_to(tiny_model_dir):
    model, _ = load_causal_lm(tiny_model_dir)
    embedding = model.get_input_embeddings().weight
    assert model.lm_head.weight is embedding  # tied as loaded
    prepack_linears(model)
    assert isinstance(model.lm_head, PackedLinear)
    assert model.get_input_embeddings().weight is embedding  # the token lookup keeps its table


def test_quantized_and_half_precision_layers_are_left_as_they_are(tiny_model_dir):
    model, _ = load_causal_lm(tiny_model_dir)
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    assert prepack_linears(quantized) == 0
    half = copy.deepcopy(model).to(torch.float16)
    assert prepack_linears(half) == 0 and _kinds(half) == (15, 0, 0)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    assert prepack_linears(bf16) == 15
    subclassed = quantize.apply("int8-weight-only-torchao", copy.deepcopy(model), quantize.Target(torch.device("cpu")))
    plain_weights = sum(type(m) is nn.Linear and type(m.weight.data) is torch.Tensor for m in subclassed.modules())
    assert plain_weights < 15  # torchao's weights are tensor subclasses inside nn.Linear: not packed
    assert prepack_linears(subclassed) == plain_weights


def test_the_engine_prepacks_only_an_eager_step(tiny_model_dir):
    model, tokenizer = load_causal_lm(tiny_model_dir)
    assert not Engine(model, tokenizer, "cpu").prepacked  # off unless asked
    compiled = Engine(model, tokenizer, "cpu", "slots", "default", prepack=True)  # inductor's freezing packs by itself
    assert not compiled.prepacked and _kinds(model) == (15, 0, 0)


def test_fused_projections_give_each_projection_its_own_output_in_any_order():
    torch.manual_seed(0)
    linears = [nn.Linear(8, width) for width in (8, 4, 4)]  # with biases, as Qwen2's q, k and v have
    fused = FusedProjections(linears)
    products = []
    fused.product.register_forward_hook(lambda module, args, out: products.append(out))
    slices = [ProjectionSlice(fused, index) for index in range(3)]
    x, other = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with torch.inference_mode():
        for index in (0, 1, 2):
            torch.testing.assert_close(slices[index](x), linears[index](x), atol=1e-5, rtol=1e-4)
        assert len(products) == 1 and fused._memo is None  # one product for the three parts, let go once all were taken
        for order in ((2, 0, 1), (1, 1, 0, 2)):  # a part asked twice: computed afresh
            for index in order:
                torch.testing.assert_close(slices[index](x), linears[index](x), atol=1e-5, rtol=1e-4)
        assert len(products) == 4
        torch.testing.assert_close(slices[1](x), linears[1](x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(slices[2](other), linears[2](other), atol=1e-5, rtol=1e-4)  # another input: afresh
        assert len(products) == 6 and fused._memo is not None  # one part of three taken: the product kept for the others
        slices[0](other), slices[1](other)
        assert len(products) == 6 and fused._memo is None


def test_siblings_are_fused_only_when_they_can_share_one_product(tiny_model_dir):
    unfused, _ = load_causal_lm(tiny_model_dir)
    assert prepack_linears(unfused, fuse=False) == 15 and _kinds(unfused) == (0, 15, 0)
    model, _ = load_causal_lm(tiny_model_dir)
    layer = model.model.layers[0]
    layer.self_attn.k_proj.bias = nn.Parameter(torch.zeros(layer.self_attn.k_proj.out_features))  # q and v have none
    assert prepack_linears(model) == 15
    assert isinstance(layer.self_attn.k_proj, PackedLinear) and isinstance(layer.mlp.up_proj, ProjectionSlice)
    assert _kinds(model) == (0, 8, 7)  # layer 0's attention and the output layer packed apart; 2 + 3 + 2 sliced
