"""What compiling the reference engine's decode step costs at a server start, and whether a cache can pay it once.

Each form runs in fresh interpreters, twice over one `TORCHINDUCTOR_CACHE_DIR` (cold, then warm), and reports the
compile time (`Engine.warm_compiled`), inductor's and AOTAutograd's cache counters, peak RSS and a decode step's
time at widths 2 and 8 (`--steps` steps of the engine's own batch):

- `frozen`: what `serving.compile: default` runs on a CPU (inductor `freezing`: the weights prepacked);
- `unfrozen`: the same without freezing (cacheable, weights not prepacked);
- `aot`: AOTInductor: the step exported over the slot buffers and compiled into a package once (`--package`), then
  loaded; its step called directly on caches of the widths' size.

    .venv/bin/python bench/compile_cost.py --out docs/bench/compile_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers.cache_utils import Cache

from perfkit import config
from perfkit.engine import Engine
from perfkit.models import load_causal_lm
from perfkit.provenance import cpu_model
from perfkit.serving.state import WARMUP_PROMPT
from perfkit.slots import SlotCache, SlotLayer, decode_step

WIDTHS = (2, 8)


class _Buffers(Cache):
    """A slot cache over given buffers (export takes tensors, not a `SlotCache`)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], columns: torch.Tensor, visible: torch.Tensor) -> None:
        self.columns, self.visible = columns, visible
        super().__init__(layers=[SlotLayer(k, v, self) for k, v in zip(keys, values)])


class _Step(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens, positions, visible, keys, values):  # noqa: ANN001, ANN201
        return decode_step(self.model, _Buffers(keys, values, positions, visible), tokens, positions)


def _buffers(model: torch.nn.Module, slots: int, context: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    layers = SlotCache.for_model(model, slots, context, torch.float32, "cpu").layers
    return [layer.keys for layer in layers], [layer.values for layer in layers]


def _inputs(width: int, span: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.ones(width, 1, dtype=torch.long), torch.full((width, 1), span - 1), torch.ones(width, span, dtype=torch.bool)


def _aot(model: torch.nn.Module, package: Path, steps: int) -> dict[str, float]:
    out: dict[str, float] = {}
    if not package.exists():
        keys, values = _buffers(model, 4, 256)
        dims = {0: torch.export.Dim("slots", min=2, max=64), 2: torch.export.Dim("context", min=2, max=8192)}
        width, span = torch.export.Dim("width", min=2, max=64), torch.export.Dim("span", min=2, max=8192)
        t0 = time.perf_counter()
        with torch.no_grad():
            program = torch.export.export(
                _Step(model).eval(), (*_inputs(2, 40), keys, values),
                dynamic_shapes=({0: width}, {0: width}, {0: width, 1: span}, [dims] * len(keys), [dims] * len(keys)),
                strict=False,
            )  # fmt: skip
        out["export_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        torch._inductor.aoti_compile_and_package(program, package_path=str(package), inductor_configs={"freezing": True})
        out["compile_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner = torch._inductor.aoti_load_package(str(package))
    out["load_s"] = time.perf_counter() - t0
    with torch.inference_mode():
        keys, values = _buffers(model, 2, 64)
        tokens, positions, visible = _inputs(2, 40)
        copies = _Buffers([k.clone() for k in keys], [v.clone() for v in values], positions, visible)
        expected = decode_step(model, copies, tokens, positions)
        out["max_abs_logit_diff"] = float((runner(tokens, positions, visible, keys, values) - expected).abs().max())
        for width in WIDTHS:
            keys, values = _buffers(model, width, 128)
            args = (*_inputs(width, 101), keys, values)
            for _ in range(3):
                runner(*args)
            t0 = time.perf_counter()
            for _ in range(steps):
                runner(*args)
            out[f"step_ms_width{width}"] = (time.perf_counter() - t0) / steps * 1000
    return out


def _jit(model: torch.nn.Module, tokenizer, freeze: bool, steps: int) -> dict[str, float]:  # noqa: ANN001
    engine = Engine(model, tokenizer, "cpu", "slots", "default")
    torch._inductor.config.freezing = freeze  # read at the first call, after `compiled_step` set it
    prompt = engine.encode(WARMUP_PROMPT)
    t0 = time.perf_counter()
    engine.warm_compiled(prompt)
    out = {"compile_s": time.perf_counter() - t0}
    for width in WIDTHS:
        batch = engine.new_batch(width)
        batch.join([(i, prompt, steps + 8, False) for i in range(width)])
        for _ in range(3):
            batch.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            batch.step()
        out[f"step_ms_width{width}"] = (time.perf_counter() - t0) / steps * 1000
    return out


def child(form: str, package: Path, steps: int) -> dict[str, object]:
    from torch._dynamo.utils import counters

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cfg = config.load("baseline")
    model, tokenizer = load_causal_lm(cfg.resolve(cfg.model.path), "cpu", "float32")
    figures = _aot(model, package, steps) if form == "aot" else _jit(model, tokenizer, form == "frozen", steps)
    caches = {k: v for group in ("inductor", "aot_autograd") for k, v in counters[group].items() if "cache" in k}
    return {"form": form, **figures, "caches": caches, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forms", nargs="+", default=["frozen", "unfrozen", "aot"], choices=["frozen", "unfrozen", "aot"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", nargs=2, metavar=("FORM", "PACKAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.steps)))
        return
    runs = []
    for form in args.forms:
        with tempfile.TemporaryDirectory() as folder:
            env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(Path(folder) / "inductor")}
            for attempt in ("cold", "warm"):
                command = [sys.executable, __file__, "--steps", str(args.steps), "--child", form, str(Path(folder) / "step.pt2")]
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                runs.append({"cache": attempt, **json.loads(done.stdout.strip().splitlines()[-1])})
                print(json.dumps(runs[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_model(), "torch": torch.__version__, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
