"""The tensor-parallel split and sharded loading, in one process (no collectives needed to load)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perfkit.optim import shard_model
from perfkit.optim.shard_model import Comm, Plan, ShardingError, load_sharded, split_even


@pytest.fixture(scope="session")
def tiny93_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's head layout in miniature: 9 query heads sharing 3 KV heads."""
    from perfkit.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-9-3"), heads=9, kv_heads=3, head_dim=8)


def _config(model_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir, local_files_only=True)


def test_split_even_covers_everything_once_larger_parts_first() -> None:
    assert split_even(3, 2) == [(0, 2), (2, 3)]
    assert split_even(10, 3) == [(0, 4), (4, 7), (7, 10)]
    for total, parts in ((49152, 3), (1536, 2), (7, 7)):
        cuts = split_even(total, parts)
        assert cuts[0][0] == 0 and cuts[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))


def test_rank_count_that_does_not_divide_kv_heads_is_refused_naming_allowed(tiny93_dir: Path) -> None:
    with pytest.raises(ShardingError, match=r"allowed rank counts: 1, 3;.*uneven_heads"):
        Plan.build(_config(tiny93_dir), 2, 0)
    with pytest.raises(ShardingError, match=r"allowed rank counts: 1, 2, 3$"):
        Plan.build(_config(tiny93_dir), 4, 0, uneven_heads=True)


def test_uneven_heads_split_whole_kv_groups(tiny93_dir: Path) -> None:
    config = _config(tiny93_dir)
    plans = [Plan.build(config, 2, r, uneven_heads=True) for r in range(2)]
    assert [p.kv_heads for p in plans] == [(0, 2), (2, 3)]
    assert [p.q_heads for p in plans] == [(0, 6), (6, 9)]  # each KV head keeps its 3 query heads
    assert plans[0].imbalance() == pytest.approx(4 / 3)
    assert Plan.build(config, 3, 1).q_heads == (3, 6)


class SliceSpy:
    """Wraps safetensors' safe_open: records every read, and refuses whole-tensor reads."""

    def __init__(self, real) -> None:
        self.real, self.reads = real, []

    def __call__(self, path: str, framework: str):
        spy, handle = self, self.real(path, framework=framework)

        class Handle:
            def __enter__(self):
                self.f = handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_tensor(self, name):
                raise AssertionError(f"whole tensor {name} read")

            def get_slice(self, name):
                piece = self.f.get_slice(name)

                class Slice:
                    def get_shape(self):
                        return piece.get_shape()

                    def __getitem__(self, index):
                        out = piece[index]
                        spy.reads.append((name, tuple(piece.get_shape()), tuple(out.shape)))
                        return out

                return Slice()

        return Handle()


@pytest.mark.parametrize("embedding", ["replicated", "vocab"])
def test_sharded_loading_reads_only_its_slices(tiny93_dir: Path, monkeypatch: pytest.MonkeyPatch, embedding: str) -> None:
    config = _config(tiny93_dir)
    spies, models = [], []
    for rank in range(2):
        spy = SliceSpy(shard_model.safe_open)
        monkeypatch.setattr(shard_model, "safe_open", spy)
        plan = Plan.build(config, 2, rank, uneven_heads=True, embedding=embedding)
        model, report = load_sharded(tiny93_dir, plan, Comm())
        monkeypatch.undo()
        spies.append(spy)
        models.append(model)
        assert report.bytes_read < report.checkpoint_bytes
        for name, full, read in spy.reads:
            if plan.source_slice(name) is not None:
                assert read != full and 0 < read[0] * (read[1] if len(read) > 1 else 1) < torch.Size(full).numel(), name
        assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
        assert model.lm_head.weight is model.model.embed_tokens.weight  # re-tied after load_state_dict(assign=True)
    # the two ranks' slices of each split tensor add up to the whole tensor
    full_of = {name: full for name, full, _ in spies[0].reads}
    for name, full in full_of.items():
        sizes = [[r for n, _, r in spy.reads if n == name][0] for spy in spies]
        cut = Plan.build(config, 2, 0, uneven_heads=True, embedding=embedding).source_slice(name)
        if cut is not None:
            assert sum(s[cut[0]] for s in sizes) == full[cut[0]], name
    attn = models[0].model.layers[0].self_attn
    assert attn.q_proj.weight.shape[0] == 6 * 8 and attn.k_proj.weight.shape[0] == 2 * 8


def test_one_rank_sharded_model_equals_from_pretrained(tiny93_dir: Path) -> None:
    from perfkit.models import load_causal_lm

    reference, _ = load_causal_lm(tiny93_dir)
    for embedding in ("replicated", "vocab"):
        model, _ = load_sharded(tiny93_dir, Plan.build(_config(tiny93_dir), 1, 0, embedding=embedding), Comm())
        ids = torch.tensor([[5, 17, 300, 4, 9, 12]])
        with torch.inference_mode():
            assert torch.equal(model(ids).logits, reference(ids).logits)


def test_allreduce_bytes_from_shapes(tiny93_dir: Path) -> None:
    config = _config(tiny93_dir)
    replicated = Plan.build(config, 2, 0, uneven_heads=True)
    vocab = Plan.build(config, 2, 0, uneven_heads=True, embedding="vocab")
    assert shard_model.allreduce_bytes_per_token(config, replicated) == 2 * 2 * 72 * 4  # 2 per layer x 2 layers x hidden x fp32
    assert shard_model.allreduce_bytes_per_token(config, vocab) == 5 * 72 * 4  # + the embedding's all-reduce
    assert shard_model.allreduce_bytes_per_token(config, Plan.build(config, 1, 0)) == 0
