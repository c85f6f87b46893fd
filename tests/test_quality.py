"""Perplexity, top-1 agreement and KL on known cases; every held-out target scored exactly once."""

import math

import pytest
import torch

from perfkit.quality import Reference, windows

VOCAB = 50


def uniform(ids):
    return torch.zeros(len(ids), VOCAB)


def oracle(sequence):
    """A model that puts (almost) all its mass on the true next token of `sequence`."""

    def logits(ids):
        out = torch.zeros(len(ids), VOCAB)
        start = next(i for i in range(len(sequence)) if tuple(sequence[i : i + len(ids)]) == tuple(ids))
        for pos in range(len(ids)):
            if start + pos + 1 < len(sequence):
                out[pos, sequence[start + pos + 1]] = 100.0
        return out

    return logits


@pytest.mark.parametrize("window,stride", [(16, 16), (16, 4), (7, 3), (100, 100)])
def test_windows_score_every_target_exactly_once(window, stride):
    n = 61
    ws = windows(n, window, stride)
    scored = [t for w in ws for t in range(w.first_target, w.stop)]
    assert sorted(scored) == list(range(1, n))
    # a target is predicted from inside its window: by the position just before it
    assert all(w.end - w.start <= window and w.start < w.first_target and w.stop <= w.end + 1 for w in ws)


def test_uniform_logits_have_perplexity_equal_to_the_vocabulary_size():
    ids = [i % VOCAB for i in range(0, 300, 7)]
    q = Reference.build(uniform, ids, window=16, stride=8).score()
    assert q.perplexity == pytest.approx(VOCAB, rel=1e-5)
    assert q.top1_agreement == 1.0 and q.kl_mean == pytest.approx(0.0, abs=1e-6)
    assert q.tokens == len(ids) - 1


def test_a_perfect_predictor_has_perplexity_one_and_moves_far_from_uniform():
    ids = [(i * 13) % VOCAB for i in range(64)]
    ref = Reference.build(uniform, ids, window=16, stride=16)
    q = ref.score(oracle(ids))
    assert q.perplexity == pytest.approx(1.0, rel=1e-3)
    # KL(uniform || one-hot) is about 100 nats minus log V; agreement is only where argmax ties land on the target.
    assert q.kl_mean > 50
    assert q.top1_agreement < 0.5


def test_the_reference_scored_through_its_own_function_matches_itself():
    torch.manual_seed(0)
    table = torch.randn(VOCAB, VOCAB)
    ids = torch.randint(0, VOCAB, (80,)).tolist()
    model = lambda xs: table[torch.tensor(xs)]  # noqa: E731 - a bigram "model"
    ref = Reference.build(model, ids, window=20, stride=10)
    again = ref.score(model)
    assert again.top1_agreement == 1.0 and again.kl_mean == pytest.approx(0.0, abs=1e-6)
    assert again.perplexity == pytest.approx(ref.score().perplexity)
    noisy = ref.score(lambda xs: table[torch.tensor(xs)] + 3 * torch.randn(len(xs), VOCAB))
    assert noisy.top1_agreement < 1.0 and noisy.kl_mean > 0
    assert math.isfinite(noisy.perplexity)


def test_too_few_tokens_is_an_error():
    with pytest.raises(ValueError, match="two tokens"):
        windows(1, 8, 8)
