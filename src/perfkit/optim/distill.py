"""Knowledge distillation: train a student to match the teacher's next-token distributions.

The loss, per position, compares the teacher's distribution p with the student's q, both at
temperature T (logits / T), computed in fp32 whatever the autocast dtype of the forward pass:

- `forward_kl`: KL(p || q) = sum p (log p - log q), mass-covering (Hinton et al.);
- `reverse_kl`: KL(q || p), mode-seeking (MiniLLM);
- `ce`: plain cross-entropy on the data's next tokens: fine-tuning, the control.

A KL loss is mixed with cross-entropy as alpha x T^2 x KL + (1 - alpha) x CE (T^2 keeps the KL's
gradients at the same scale as T changes).

*What the teacher's distribution is here.* The teacher's logits are computed once and cached as
its top-k (`perfkit.optim.distill_data`, k = 64 by default: 512 bytes per token in fp32 instead
of 196 KB for a 49,152-word vocabulary), with the log-sum-exp over the whole vocabulary at T. The
KL is then taken over k + 1 outcomes: the teacher's k most likely tokens, and "any other token",
whose teacher probability is 1 - (top-k mass), exactly. The student's probabilities of the same
k + 1 outcomes come from its full softmax. This is a coarsening of the full distributions, so it
is at most the full KL (data-processing inequality); it is 0 for a student equal to the teacher,
and, unlike a KL on the renormalised top-k alone, it also charges a student that moves mass
outside the teacher's top-k.

*Training* (`train`): AdamW at a constant learning rate with gradient clipping, batches of
`batch_size` sequences in `micro_batch` slices (gradients accumulated), bf16 autocast where the
CPU has native bf16 (AMX / AVX512-BF16; elsewhere it would be emulated and slower). Every
`checkpoint_every` steps the student's weights, AdamW's state, the step, the data cursor, the
losses and learning-curve points so far are written to one file (atomically; only the last is
kept); a run started again with the same checkpoint path resumes from it and continues the same
loss sequence. A run stops at `max_steps` or after `max_minutes` of wall time, whichever first.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LossName = Literal["forward_kl", "reverse_kl", "ce"]
LOSSES: tuple[LossName, ...] = ("forward_kl", "reverse_kl", "ce")


def _with_rest(logp_top: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the top-k outcomes plus one outcome for "any other token"."""
    mass = torch.logsumexp(logp_top, dim=-1, keepdim=True).clamp(max=0.0)
    rest = torch.log((-torch.expm1(mass)).clamp(min=1e-30))
    return torch.cat([logp_top, rest], dim=-1)


def kl_topk(
    student_logits: torch.Tensor,
    top_values: torch.Tensor,
    top_index: torch.Tensor,
    teacher_lse: torch.Tensor,
    temperature: float = 1.0,
    reverse: bool = False,
) -> torch.Tensor:
    """Mean KL per position over the teacher's top-k tokens plus "the rest" (fp32; see the module doc).

    student_logits: (..., V); top_values / top_index: the teacher's k largest raw logits and their
    token ids (..., k); teacher_lse: logsumexp(teacher logits / T) over the whole vocabulary (...).
    """
    s = student_logits.float() / temperature
    s_logp = s.gather(-1, top_index.long()) - torch.logsumexp(s, dim=-1, keepdim=True)
    t_logp = top_values.float() / temperature - teacher_lse.float()[..., None]
    log_q, log_p = _with_rest(s_logp), _with_rest(t_logp)
    if reverse:
        log_p, log_q = log_q, log_p
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl.mean()


def distill_loss(
    student_logits: torch.Tensor,
    ids: torch.Tensor,
    top_values: torch.Tensor,
    top_index: torch.Tensor,
    teacher_lse: torch.Tensor,
    loss: LossName,
    alpha: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The training loss of one batch of sequences `ids` (B, L), in fp32."""
    logits = student_logits.float()
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    if loss == "ce":
        return ce
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r}: allowed {', '.join(LOSSES)}")
    kl = kl_topk(logits, top_values, top_index, teacher_lse, temperature, reverse=loss == "reverse_kl")
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


@dataclass(frozen=True)
class Batches:
    """Training sequences and the teacher's cached top-k; the cursor counts sequences handed out."""

    ids: torch.Tensor  # (N, L) int64
    top_values: torch.Tensor  # (N, L, k) float32
    top_index: torch.Tensor  # (N, L, k) int32
    lse: torch.Tensor  # (N, L) float32, at `temperature`
    temperature: float
    seed: int = 0

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.ids), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))

    def take(self, cursor: int, size: int) -> torch.Tensor:
        """Indices of the `size` sequences from `cursor` on: a fresh shuffle every epoch, the same on every run."""
        n = len(self.ids)
        return torch.stack([self.order((cursor + i) // n)[(cursor + i) % n] for i in range(size)])


@dataclass(frozen=True)
class TrainSettings:
    loss: LossName = "forward_kl"
    alpha: float = 1.0
    temperature: float = 1.0
    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 8
    micro_batch: int = 2
    max_steps: int = 15
    max_minutes: float = 10.0
    checkpoint_every: int = 5
    eval_every: int = 5
    bf16: bool = False

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (limits and intervals may change)."""
        keep = ("loss", "alpha", "temperature", "lr", "weight_decay", "grad_clip", "batch_size", "micro_batch", "bf16")
        return {k: v for k, v in asdict(self).items() if k in keep}


@dataclass(frozen=True)
class TrainResult:
    losses: tuple[float, ...]
    curve: tuple[dict[str, float], ...]  # {"step", "tokens", evaluation metrics...}, step 0 first
    steps: int
    tokens: int
    wall_s: float
    stopped_by: str  # "max_steps" or "max_minutes"
    resumed_at: int | None = None
    step_s: float = field(default=float("nan"))  # mean seconds per training step, evaluation excluded


Evaluate = Callable[[nn.Module], Mapping[str, float]]
OnStep = Callable[[int, Mapping[str, float]], None]


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write `state` to `path` atomically: a kill mid-write leaves the previous checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)


def train(
    student: nn.Module,
    data: Batches,
    s: TrainSettings,
    checkpoint: Path | None = None,
    *,
    identity: Mapping[str, Any] | None = None,
    evaluate: Evaluate | None = None,
    initial: Mapping[str, float] | None = None,
    on_step: OnStep | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `student` in place; resume from `checkpoint` if it holds a run with the same settings and identity.

    `evaluate(student)` gives the learning-curve metrics every `eval_every` steps and at the end;
    `initial`, when given, is the step-0 point (the untrained student, already evaluated elsewhere).
    """
    from tqdm.auto import tqdm

    if s.loss != "ce" and not math.isclose(s.temperature, data.temperature):
        raise ValueError(f"temperature {s.temperature} differs from the cached teacher's {data.temperature}")
    if s.batch_size % s.micro_batch:
        raise ValueError(f"batch_size {s.batch_size} must be a multiple of micro_batch {s.micro_batch}")
    opt = torch.optim.AdamW(student.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    tokens_per_step = s.batch_size * data.ids.shape[1]
    ident = {"settings": s.fingerprint(), **(identity or {})}
    st: dict[str, Any] = {"step": 0, "cursor": 0, "losses": [], "curve": [], "elapsed_s": 0.0, "train_s": 0.0}
    resumed_at = None
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        if saved.get("identity") == ident:
            student.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optim"])
            st = {k: saved[k] for k in st}
            resumed_at = st["step"]

    def point(step: int) -> None:
        if evaluate is None:
            return
        was_training = student.training
        student.eval()
        st["curve"].append({"step": step, "tokens": step * tokens_per_step, **evaluate(student)})
        student.train(was_training)

    if st["step"] == 0 and not st["curve"]:
        if initial is not None:
            st["curve"].append({"step": 0, "tokens": 0, **initial})
        else:
            point(0)
    student.train()
    started = time.perf_counter() - st["elapsed_s"]
    stopped_by = "max_steps"
    bar = tqdm(total=s.max_steps, initial=st["step"], desc=f"train {s.loss}", disable=not progress)
    device = next(student.parameters()).device
    device_type = device.type
    while st["step"] < s.max_steps:
        if time.perf_counter() - started >= s.max_minutes * 60:
            stopped_by = "max_minutes"
            break
        step_started = time.perf_counter()
        idx = data.take(st["cursor"], s.batch_size)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for part in idx.split(s.micro_batch):
            ids = data.ids[part].to(device)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=s.bf16):
                logits = student(input_ids=ids, use_cache=False).logits
            loss = distill_loss(
                logits, ids, *(t[part].to(device) for t in (data.top_values, data.top_index, data.lse)), s.loss, s.alpha, s.temperature
            ) * (len(part) / s.batch_size)
            loss.backward()
            total += float(loss.detach())
        if s.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), s.grad_clip)
        opt.step()
        st["step"] += 1
        st["cursor"] += s.batch_size
        st["losses"].append(total)
        st["train_s"] += time.perf_counter() - step_started
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
        if on_step is not None:
            on_step(st["step"], {"train_loss": total})
        if st["step"] % s.eval_every == 0 or st["step"] == s.max_steps:
            point(st["step"])
        if checkpoint is not None and st["step"] % s.checkpoint_every == 0:
            st["elapsed_s"] = time.perf_counter() - started
            save_checkpoint(checkpoint, {**st, "model": student.state_dict(), "optim": opt.state_dict(), "identity": ident})
    bar.close()
    if st["curve"] and st["curve"][-1]["step"] != st["step"]:
        point(st["step"])  # stopped by the clock between two evaluations: the curve ends where training did
    student.eval()
    steps = st["step"]
    return TrainResult(
        tuple(st["losses"]),
        tuple(st["curve"]),
        steps,
        steps * tokens_per_step,
        time.perf_counter() - started,
        stopped_by,
        resumed_at,
        st["train_s"] / steps if steps else float("nan"),
    )


@dataclass(frozen=True)
class Trend:
    """gap = a x tokens^(-b), with gap = 1 - kept: a power law fitted to a learning curve (log-log least squares)."""

    a: float
    b: float
    r2: float
    points: int

    def kept_at(self, tokens: float) -> float:
        return 1.0 - self.a * tokens ** (-self.b)

    def tokens_for(self, kept: float) -> float:
        """Training tokens at which the trend reaches `kept`: an extrapolation; inf if it never does."""
        if self.b <= 0 or not 0 < kept < 1:
            return math.inf
        log_tokens = math.log(self.a / (1.0 - kept)) / self.b  # a nearly flat trend overflows a float: beyond reach
        return math.exp(log_tokens) if log_tokens < math.log(sys.float_info.max) else math.inf


def fit_trend(tokens: list[float], kept: list[float]) -> Trend | None:
    """Fit `Trend` to the points with tokens > 0 and 0 < kept < 1; None with fewer than two such points."""
    pts = [(t, k) for t, k in zip(tokens, kept) if t > 0 and 0 <= k < 1 and math.isfinite(k)]
    if len(pts) < 2:
        return None
    x = np.log([t for t, _ in pts])
    y = np.log([1.0 - k for _, k in pts])
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 0.0
    return Trend(float(math.exp(intercept)), float(-slope), r2, len(pts))
