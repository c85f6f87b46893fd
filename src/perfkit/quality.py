"""Quality of a changed model against the unmodified one, on the same held-out tokens.

The held-out text is scored window by window: a window of `window` tokens starts every `stride`
tokens, and every token after the first is scored exactly once, as a target predicted by the first
window that has it or its predecessor in view (a window's last position predicts the token just
after it, so disjoint windows with `stride == window` leave no gaps). For every scored target three
numbers are accumulated:

- *perplexity*: exp of the mean negative log-likelihood of the true next token. A model that
  spreads its probability uniformly over a vocabulary of V tokens has perplexity exactly V.
- *top-1 agreement*: the share of positions where the candidate's most likely next token is the
  reference's. It is the "accuracy kept" of a greedy server: where it is 1, greedy outputs match.
- *mean KL*: KL(reference || candidate) in nats, averaged over positions: how far the whole
  next-token distribution moved, which agreement alone hides.
- *top-1 accuracy*: the share of positions where the candidate's most likely next token is the
  true next token: a score with a right answer, so that "accuracy kept" (candidate / reference)
  can be read as the seed article reads it.

`Reference.tokens(candidate)` keeps these per scored target (`TokenScores`), so that intervals can
be taken over tokens by resampling them (`perfkit.stats.bootstrap_paired`).

The reference's log-probabilities are computed once and kept, so every candidate is compared on
exactly the same positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

LogitsFn = Callable[[Sequence[int]], torch.Tensor]


@dataclass(frozen=True)
class Window:
    """Tokens `[start, end)` are the model's input; targets `ids[first_target:stop]` are scored here."""

    start: int
    end: int
    first_target: int
    stop: int


def windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """Windows over `n_tokens` so that every target after the first token is scored exactly once."""
    if n_tokens < 2:
        raise ValueError("need at least two tokens to score")
    out, scored_up_to, start = [], 1, 0
    while scored_up_to < n_tokens:
        end = min(start + window, n_tokens)
        stop = min(end + 1, n_tokens)
        first = max(start + 1, scored_up_to)
        if first < stop:
            out.append(Window(start, end, first, stop))
            scored_up_to = stop
        start += stride
    return out


@dataclass(frozen=True)
class Quality:
    perplexity: float
    top1_agreement: float
    kl_mean: float
    tokens: int
    top1_accuracy: float = float("nan")

    def as_metrics(self) -> dict[str, float]:
        return {
            "perplexity": self.perplexity,
            "top1_agreement": self.top1_agreement,
            "kl_mean": self.kl_mean,
            "top1_accuracy": self.top1_accuracy,
            "eval_tokens": float(self.tokens),
        }


@dataclass(frozen=True)
class TokenScores:
    """Per scored target: negative log-likelihood, KL to the reference, agreement and correctness (0/1)."""

    nll: np.ndarray
    kl: np.ndarray
    agree: np.ndarray
    correct: np.ndarray

    def summary(self) -> Quality:
        return Quality(
            math.exp(float(self.nll.mean())), float(self.agree.mean()), float(self.kl.mean()), len(self.nll), float(self.correct.mean())
        )


def _window_logprobs(logits_fn: LogitsFn, ids: Sequence[int], w: Window) -> torch.Tensor:
    """Log-probabilities (float32) predicting the targets `ids[w.first_target:w.stop]`."""
    logits = logits_fn(ids[w.start : w.end]).float()
    return torch.log_softmax(logits[w.first_target - 1 - w.start : w.stop - 1 - w.start], dim=-1)


@dataclass
class Reference:
    """The unmodified model's log-probabilities on the held-out windows, kept for every comparison."""

    ids: tuple[int, ...]
    windows: tuple[Window, ...]
    logprobs: tuple[torch.Tensor, ...]

    @classmethod
    def build(cls, logits_fn: LogitsFn, ids: Sequence[int], window: int, stride: int) -> Reference:
        ws = tuple(windows(len(ids), window, stride))
        return cls(tuple(ids), ws, tuple(_window_logprobs(logits_fn, ids, w) for w in ws))

    def tokens(self, logits_fn: LogitsFn | None = None) -> TokenScores:
        """Per-target scores of `logits_fn` (a candidate model); None scores the reference itself."""
        parts: list[tuple[torch.Tensor, ...]] = []
        for w, ref in zip(self.windows, self.logprobs):
            cand = ref if logits_fn is None else _window_logprobs(logits_fn, self.ids, w)
            targets = torch.tensor(self.ids[w.first_target : w.stop])
            top = cand.argmax(-1)
            kl = (ref.exp() * (ref - cand)).sum(-1).clamp(min=0.0)
            parts.append((-cand.gather(1, targets[:, None])[:, 0], kl, top == ref.argmax(-1), top == targets))
        nll, kl, agree, correct = (torch.cat(col).double().numpy() for col in zip(*parts))
        return TokenScores(nll, kl, agree, correct)

    def score(self, logits_fn: LogitsFn | None = None) -> Quality:
        """Compare `logits_fn` (a candidate model) with the reference; None scores the reference itself."""
        return self.tokens(logits_fn).summary()
