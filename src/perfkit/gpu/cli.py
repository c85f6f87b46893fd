"""The GPU commands: `perfkit model random`, `perfkit gpu-check` and `perfkit gpu-probe` (see `perfkit.gpu`)."""

from __future__ import annotations

import argparse
import json


def _model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from perfkit import config, model_shapes
    from perfkit.models import default_embedding_dir

    root = config.find_root()
    spec = model_shapes.shape(root, args.config)
    tokenizer = args.tokenizer or (root / "data/models/smollm2-135m-instruct" if spec.kind == "causal-lm" else default_embedding_dir())
    if not Path(tokenizer, "tokenizer_config.json").is_file():
        raise model_shapes.ShapeError(
            f"--tokenizer {str(tokenizer)!r}: no tokenizer there (`perfkit prepare` builds the "
            "default model's; or name a folder holding tokenizer files)"
        )
    out = args.out or root / "data" / "models" / f"random-{spec.name}"
    model_shapes.write_random(spec, Path(out), Path(tokenizer), seed=args.seed, dtype=args.dtype, device=args.device)
    print(json.dumps({"written": str(out), "shape": spec.name, "parameters": spec.parameters, "random_weights": True}))
    return 0


def add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="`model random --config NAME`: seeded random weights of a shipped architecture "
        "(data/model-shapes), loadable like any checkpoint",
    )
    p.add_argument("action", choices=["random"])
    p.add_argument("--config", required=True, help="a shape in data/model-shapes/shapes.yaml")
    p.add_argument("--out", help="checkpoint folder to write (default: data/models/random-NAME)")
    p.add_argument("--tokenizer", help="folder with the tokenizer (default: the default model's, or the embedding's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default="cpu", help="where to initialise the weights (cuda: seconds for an 8B shape)")
    p.set_defaults(func=_model)


def _gpu_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from perfkit import config
    from perfkit.gpu import check, page

    root = config.find_root()
    cfg = config.load("baseline", root=root)
    model = Path(args.model) if args.model else cfg.resolve(cfg.model.path)
    report = check.check(
        root,
        device=args.device,
        model=model,
        embedding=Path(args.embedding) if args.embedding else None,
        work=Path(args.work),
        only=args.only,
        cap_s=args.cap_s,
        budget_s=args.budget_s,
        profile=args.profile,
    )
    written = page.write(report, Path(args.out))
    print(json.dumps({"report": [str(p) for p in written], "failed": [s["stage"] for s in report["stages"] if s["status"] == "failed"]}))
    return 1 if any(s["status"] == "failed" for s in report["stages"]) else 0


def add_gpu_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gpu-check", help="every stage's smoke path on this device, each with a time cap; one JSON + a page (docs/gpu/)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the dry run")
    p.add_argument("--model", help="checkpoint folder (default: params model.path); e.g. `perfkit model random` output")
    p.add_argument("--embedding", help="embedding checkpoint folder (default: params model.embedding_path)")
    p.add_argument("--only", nargs="+", help="run only these stages")
    p.add_argument("--cap-s", type=float, default=120.0, help="seconds one stage may run")
    p.add_argument("--budget-s", type=float, default=360.0, help="seconds the whole check may run")
    p.add_argument("--profile", help="params.yaml profile for the stages (default: gpu-smoke on cuda, none on cpu)")
    p.add_argument("--work", default="/tmp/perfkit-gpu-check", help="scratch root the stages write to")
    p.add_argument("--out", default="docs/gpu/gpu-check.json", help="the JSON report; the page goes beside it (.md)")
    p.set_defaults(func=_gpu_check)


def _gpu_probe(args: argparse.Namespace) -> int:
    from pathlib import Path

    from perfkit import config
    from perfkit.gpu import probe
    from perfkit.hardware import gpu_clocks, gpu_info, resolve_device

    if (args.model is None) == (args.shape is None):
        raise SystemExit("perfkit gpu-probe: give --model DIR or --shape NAME")
    device = resolve_device(args.device)
    model, tokenizer, source = probe.load(
        model_dir=args.model, shape=args.shape, tokenizer_dir=args.tokenizer, device=device, dtype=args.dtype, root=config.find_root()
    )
    result = {"source": source, "device": device.type, **gpu_info(), **gpu_clocks()} | probe.probe(
        model,
        tokenizer,
        batches=args.batches,
        compiled_batches=args.compiled_batches,
        prompt_tokens=args.prompt_tokens,
        steps=args.steps,
        warmup_s=args.warmup_s,
        mode=args.mode,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, default=str))
    return 0


def add_gpu_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gpu-probe", help="one model loaded once: decode steps eager and compiled against the measured memory bandwidth")
    p.add_argument("--model", help="checkpoint folder")
    p.add_argument("--shape", help="or a shape of data/model-shapes, random weights built in device memory")
    p.add_argument("--tokenizer", help="with --shape: tokenizer folder (default: the default model's)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--compiled-batches", type=int, nargs="*", default=[1])
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--mode", choices=["default", "reduce-overhead", "max-autotune"], default="reduce-overhead")
    p.add_argument("--out", default="docs/gpu/probe.json")
    p.set_defaults(func=_gpu_probe)
