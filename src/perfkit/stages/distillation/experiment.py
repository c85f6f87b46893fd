"""The distillation experiment, in order: reference, data, students, training, quality, speed.

1. The fp32 teacher scores held-out *Persuasion* (`quality.Reference`): every student and the bf16
   teacher are compared with it on the same tokens.
2. The training data (`optim.distill_data`) is built once and cached: teacher-generated
   continuations plus training-novel text, with the teacher's top-k logits.
3. Each student keeps `student_layers[i]` layers, chosen evenly or by angular-distance importance
   measured on training-corpus text. It is evaluated untrained (the first control), then trained
   once per loss from the same initialisation; the first loss sets the steps the others run (the
   cross-entropy control at equal steps, even when `max_minutes` cut the first run short).
4. Trained students are saved with `save_pretrained` under `models_dir` (loadable by
   `from_pretrained`, servable by `perfkit serve` with `model.path` pointing at one).
5. Speed: each model in a fresh process (`perfkit.speed`), `rounds` times, variants interleaved.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from perfkit import speed, tracking, workload
from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.hardware import native_bf16, pin_threads, resolve_device
from perfkit.models import load_causal_lm
from perfkit.optim import distill, distill_data, prune, quantize
from perfkit.quality import Reference, TokenScores
from perfkit.stages.distillation.result import DistillationResult, ModelEval, Student, TrainingRun


def _bf16_autocast(setting: str, device: torch.device) -> bool:
    if setting != "auto":
        return setting == "on"
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else native_bf16()


def _curve_metrics(scores: TokenScores, teacher: TokenScores) -> dict[str, float]:
    q = scores.summary()
    return {
        "top1_accuracy": q.top1_accuracy,
        "accuracy_kept": q.top1_accuracy / float(teacher.correct.mean()),
        "top1_agreement": q.top1_agreement,
        "perplexity": q.perplexity,
        "kl_mean": q.kl_mean,
    }


def choose_layers(n_layers: int, keep: int, importance: list[float] | None) -> list[int]:
    if keep > n_layers:
        raise ValueError(f"distillation.student_layers: {keep} > the teacher's {n_layers} layers")
    return prune.evenly(n_layers, keep) if importance is None else prune.by_importance(importance, keep)


def save_student(model: torch.nn.Module, tokenizer: Any, path: Path, provenance: dict[str, Any]) -> Path:
    """`save_pretrained` the student and its tokenizer, with how it was made beside them."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "distillation.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return path


def run(cfg: Config) -> DistillationResult:
    d = cfg.distillation
    load_start = os.getloadavg()[0]
    threads = pin_threads(cfg.hardware.threads)
    device = resolve_device(cfg.hardware.device)
    teacher_dir = cfg.resolve(cfg.model.path)
    teacher, tokenizer = load_causal_lm(teacher_dir, device)
    corpus = cfg.corpus_dir

    ids = workload.heldout_ids(tokenizer, corpus, cfg.eval.tokens)
    reference = Reference.build(Engine(teacher, tokenizer, device).logits, ids, cfg.eval.window, cfg.eval.stride)
    evals: dict[str, ModelEval] = {"teacher-fp32": ModelEval("teacher-fp32", "teacher", reference.tokens(None))}
    bf16_teacher = quantize.apply("bf16", copy.deepcopy(teacher), quantize.Target(device))
    evals["teacher-bf16"] = ModelEval("teacher-bf16", "teacher", reference.tokens(Engine(bf16_teacher, tokenizer, device).logits))
    del bf16_teacher
    teacher_scores = evals["teacher-fp32"].scores

    started = time.perf_counter()
    plan = distill_data.DataPlan(
        d.seq_len, d.generated_sequences, d.corpus_sequences, d.prompt_tokens, d.top_k, d.temperature, d.data_seed, batch=8
    )
    cache = cfg.resolve(d.cache_dir)
    data_path, tensors, built = distill_data.load_or_build(cache, teacher_dir, corpus, plan, teacher, tokenizer)
    data_s = time.perf_counter() - started
    batches = distill_data.batches(tensors, d.temperature, seed=d.data_seed)

    n_layers = len(prune.decoder_layers(teacher))
    importance = None
    if d.selection == "importance":
        n_seq = math.ceil(d.importance_tokens / d.seq_len)
        probe = distill_data.corpus_sequences(tokenizer, corpus, n_seq, d.seq_len, seed=d.data_seed + 1)
        importance = prune.layer_importance(teacher, probe)

    bf16 = _bf16_autocast(d.bf16_autocast, device)
    students: list[Student] = []
    for keep_n in d.student_layers:
        keep = choose_layers(n_layers, keep_n, importance)
        base = f"{keep_n}L"
        untrained = prune.drop_layers(teacher, keep)
        untrained_scores = reference.tokens(Engine(untrained, tokenizer, device).logits)
        del untrained
        evals[f"{base}-untrained"] = ModelEval(f"{base}-untrained", "control-untrained", untrained_scores, layers=tuple(keep))
        runs: list[TrainingRun] = []
        steps = d.max_steps
        for loss in d.losses:
            name = f"{base}-{loss}"
            student = prune.drop_layers(teacher, keep)
            settings = distill.TrainSettings(
                loss=loss, alpha=d.alpha, temperature=d.temperature, lr=d.lr, batch_size=d.batch_size,
                micro_batch=d.micro_batch, max_steps=steps, max_minutes=d.max_minutes,
                checkpoint_every=d.checkpoint_every, eval_every=d.eval_every, bf16=bf16,
            )  # fmt: skip
            identity = {"teacher": str(teacher_dir), "data": data_path.name, "layers": keep}

            def evaluate(model: torch.nn.Module) -> dict[str, float]:
                return _curve_metrics(reference.tokens(Engine(model, tokenizer, device).logits), teacher_scores)

            with tracking.step_run(f"train {name}", {"loss": loss, "layers": json.dumps(keep), "bf16_autocast": bf16}) as log:
                result = distill.train(
                    student, batches, settings, cache / "checkpoints" / name / "last.pt", identity=identity,
                    evaluate=evaluate, initial=_curve_metrics(untrained_scores, teacher_scores), on_step=log,
                )  # fmt: skip
                for point in result.curve:
                    log(point["step"], {f"curve_{k}": v for k, v in point.items() if k != "step"})
            if loss == d.losses[0]:
                steps = result.steps  # the controls run the steps the first loss ran
            path = cfg.resolve(d.models_dir) / f"{cfg.model.name}-{base}-{loss}"
            save_student(student, tokenizer, path, {
                "teacher": str(teacher_dir), "layers_kept": keep, "selection": d.selection, "loss": loss,
                "alpha": d.alpha, "temperature": d.temperature, "top_k": d.top_k, "steps": result.steps,
                "tokens": result.tokens, "data": data_path.name,
            })  # fmt: skip
            role = "control-ce" if loss == "ce" else "student"
            evals[name] = ModelEval(
                name, role, reference.tokens(Engine(student, tokenizer, device).logits), layers=tuple(keep), loss=loss, path=str(path)
            )
            runs.append(TrainingRun(name, loss, tuple(keep), result))
            del student
            gc.collect()
        students.append(Student(keep_n, tuple(keep), tuple(runs)))
    del teacher
    gc.collect()

    speed_plan = speed.Plan(d.speed_prompt_tokens, d.speed_new_tokens, d.batch_sizes, d.speed_timeout_s, "distillation.speed_timeout_s")
    timed = [("teacher-fp32", teacher_dir, "fp32"), ("teacher-bf16", teacher_dir, "bf16")]
    timed += [(e.name, Path(e.path), s) for e in evals.values() if e.path for s in d.student_schemes]
    speeds: dict[tuple[str, str], list[dict[str, Any]]] = {(n, s): [] for n, _, s in timed}
    for _ in range(d.rounds):  # interleaved: each round times every model once, so drift hits all alike
        for name, path, scheme in timed:
            speeds[(name, scheme)].append(speed.spawn(cfg, path, scheme, speed_plan))

    result = DistillationResult(
        evals=evals,
        speeds=speeds,
        students=tuple(students),
        importance=tuple(importance) if importance is not None else None,
        selection=d.selection,
        n_layers=n_layers,
        batch_sizes=d.batch_sizes,
        bootstrap=d.bootstrap,
        context={
            "threads": threads,
            "bf16_autocast": bf16,
            "native_bf16": native_bf16(),
            "data_file": data_path.name,
            "data_built_now": built,
            "data_s": data_s,
            "data_sequences": int(batches.ids.shape[0]),
            "seq_len": d.seq_len,
            "top_k": d.top_k,
            "load_avg_start": load_start,
            "load_avg_end": os.getloadavg()[0],
            "rounds": d.rounds,
            "eval_tokens": len(teacher_scores.correct),
        },  # fmt: skip
        target_speedup=d.target_speedup,
        target_kept_pct=d.target_kept_pct,
        target_size_ratio=d.target_size_ratio,
    )
    for name, row in result.rows().items():
        tracking.log_variant(name, row, {"variant": name})
    return result
