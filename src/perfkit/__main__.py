"""`perfkit` / `python -m perfkit`: the command line over the same machinery the notebooks use.

Each subcommand is one `add_<name>` function that registers its parser and handler, so a new
command touches one place.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from perfkit import __version__
from perfkit.errors import PerfkitError
from perfkit.gpu.cli import add_gpu_check, add_gpu_probe, add_model


def _prepare(args: argparse.Namespace) -> int:
    from perfkit import config, prepare

    prepare.main(config.find_root())
    return 0


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="convert the embedded default model (SmolLM2 GGUF -> safetensors)")
    p.set_defaults(func=_prepare)


def _stage(args: argparse.Namespace) -> int:
    from perfkit import config

    if args.name == "new":
        if not args.new_name:
            raise SystemExit("usage: perfkit stage new NAME")
        from perfkit.stages.scaffold import new_stage

        for path in new_stage(args.new_name, config.find_root()):
            print(path)
        return 0
    from perfkit.stage import run_stage

    metrics = run_stage(args.name, smoke=args.smoke, cell_timeout_s=args.cell_timeout)
    print(json.dumps({"stage": args.name, "metrics": str(metrics)}))
    return 0


def add_stage(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stage", help="run one stage's notebook (papermill -> HTML -> metrics.json, MLflow); `stage new NAME` scaffolds a stage"
    )
    p.add_argument("name", help="stage name (see `perfkit stages`), or `new`")
    p.add_argument("new_name", nargs="?", help="with `new`: the new stage's name")
    p.add_argument("--smoke", action="store_true", help="shrink the stage to seconds (tests, CI)")
    p.add_argument("--cell-timeout", type=int, default=3600, help="seconds one notebook cell may run")
    p.set_defaults(func=_stage)


def _compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from perfkit import config
    from perfkit.compare import compare_runs

    table = compare_runs(args.run_a, args.run_b, config.find_root())
    if table.empty:
        print("the two runs share no metric")
        return 0
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False, na_rep="—"))
    return 0


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="two MLflow runs side by side: values, differences, and whether each difference exceeds the runs' between-round intervals",
    )
    p.add_argument("run_a", help="run id, or STAGE/RUN_NAME (the latest run of that name)")
    p.add_argument("run_b", help="run id, or STAGE/RUN_NAME")
    p.set_defaults(func=_compare)


def _stages(args: argparse.Namespace) -> int:
    from perfkit import config, stages

    if args.dvc:
        from perfkit.stages.scaffold import write_dvc_yaml

        print(write_dvc_yaml(config.find_root()))
        return 0
    for name, spec in stages.registry().items():
        print(f"{name:14} {spec.title}")
    return 0


def add_stages(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stages", help="list the registered stages; --dvc writes dvc.yaml from them")
    p.add_argument("--dvc", action="store_true", help="write dvc.yaml from the stage registry")
    p.set_defaults(func=_stages)


def _env(args: argparse.Namespace) -> int:
    from perfkit import config
    from perfkit.hardware import environment

    print(json.dumps(environment(config.find_root()), indent=2))
    return 0


def add_env(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="print the environment every run records")
    p.set_defaults(func=_env)


def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from perfkit.serving import cli

    port_file = Path(args.port_file) if args.port_file else None
    config_file = Path(args.config) if args.config else None
    return cli.main(args.protocol, args.host, args.port, port_file, args.set, args.smoke, config_file)


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the reference server (OpenAI-compatible REST, or gRPC) over params.yaml")
    p.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (reported through --port-file)")
    p.add_argument("--port-file", help='written once the server is ready: {"port": N, "load_s": S, "warmup_s": W, "imported_at": T}')
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override, e.g. serving.scheduler=dynamic")
    p.add_argument("--smoke", action="store_true", help="apply params.yaml's smoke overrides")
    p.add_argument("--config", help="a resolved config (JSON, as a stage's launcher writes it) instead of params.yaml")
    p.set_defaults(func=_serve)


def _load(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    import pandas as pd

    from perfkit import config
    from perfkit.endpoints.openai import preflight
    from perfkit.load.interchange import ResultFormatError, read_result, side_by_side, to_vllm
    from perfkit.load.runner import run_load, served_prompts
    from perfkit.load.workloads import served_stream

    if args.url is None and not args.compare:
        raise ResultFormatError("perfkit load: give --url (a run) or --compare FILE (another tool's result), or both")
    runs = {}
    if args.url is not None:
        cfg = config.load("load", smoke=args.smoke)
        if args.workload:
            cfg = config.override(cfg, {"workload.kind": args.workload})
        target = preflight(args.url, args.model or cfg.load.model, args.api_key_env or cfg.load.api_key_env)  # one line, exit 2
        print(f"perfkit load: {target.facts.describe()}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="perfkit-load-") as folder:
            run = run_load(
                cfg,
                target,
                served_prompts(cfg),
                Path(folder),
                mode=args.mode,
                users=args.users,
                rate_rps=args.rate,
                requests=args.requests,
                stream=served_stream(cfg),
            )
        print(json.dumps(run.summary.as_metrics(), default=float))
        if args.export:
            exported = to_vllm(run.timings, run.summary, model=target.facts.model or "")
            Path(args.export).write_text(json.dumps(exported))
            print(f"perfkit load: wrote {args.export} (vLLM bench serve's result format)", file=sys.stderr)
        runs["perfkit"] = run.summary
    for path in args.compare or ():
        try:
            imported = read_result(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError) as exc:  # ResultFormatError is a ValueError: one line, exit 2
            kind = "" if isinstance(exc, ResultFormatError) else f"{type(exc).__name__}: "
            raise ResultFormatError(f"cannot read {path}: {kind}{exc}") from None
        runs[f"{imported.tool} ({Path(path).name})"] = imported.summary
        if imported.note:
            print(f"perfkit load: {path}: {imported.note}", file=sys.stderr)
    if args.compare:
        print(pd.DataFrame(side_by_side(runs)).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def add_load(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "load", help="Locust load (params.yaml `load`) on any OpenAI-compatible server, one JSON line; beside other tools' results"
    )
    p.add_argument("--url", help="the server's base URL, e.g. http://127.0.0.1:8000 (vLLM, TGI, perfkit serve)")
    p.add_argument("--mode", choices=("closed", "open"), help="default: load.mode")
    p.add_argument("--users", type=int, help="default: load.users")
    p.add_argument("--rate", type=float, help="open loop arrivals per second; default: load.rate_rps")
    p.add_argument("--requests", type=int, help="measured requests; default: load.requests")
    p.add_argument(
        "--workload", choices=("single", "shared_prefix", "multi_turn", "trace"), help="the request stream; default: workload.kind"
    )
    p.add_argument("--model", help="the endpoint's model id; default: load.model, else the first /v1/models lists")
    p.add_argument("--api-key-env", help="environment variable holding the endpoint's API key; default: load.api_key_env")
    p.add_argument("--export", metavar="FILE", help="also write the run as vLLM bench serve's result JSON (per-request records)")
    p.add_argument(
        "--compare",
        metavar="FILE",
        action="append",
        help="a vLLM bench serve result or guidellm report, recomputed from its per-request records and shown beside the run",
    )
    p.add_argument("--smoke", action="store_true", help="apply params.yaml's smoke overrides")
    p.set_defaults(func=_load)


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from perfkit import config, results
    from perfkit.load.interchange import write_vllm

    cfg = config.load(args.stage, smoke=args.smoke)
    result = results.load(cfg.out_dir)
    runs = result.load_runs()
    if not runs:
        raise results.ResultFileError(
            f"{cfg.out_dir / results.RESULT_FILE} keeps no load run: {args.stage!r} is not a served stage, or its result was "
            f"saved by a perfkit that did not keep them (rerun it: `perfkit stage {args.stage}`)"
        )
    folder = Path(args.out) if args.out else cfg.root / "perfkit-export" / args.stage
    paths = write_vllm(runs, folder, model=cfg.model.name)
    print(json.dumps({"stage": args.stage, "runs": len(paths), "folder": str(folder)}))
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="every load run a stage's saved result keeps, one vLLM bench serve result JSON each (per-request records; docs/load.md)",
    )
    p.add_argument("stage", help="a served stage: baseline, batching, optimized, capacity")
    p.add_argument("--out", metavar="DIR", help="default: perfkit-export/STAGE in the checkout; files of the same names are replaced")
    p.add_argument("--smoke", action="store_true", help="the stage's smoke run's result (tests)")
    p.set_defaults(func=_export)


def _shard_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing.errors import record

    from perfkit import config
    from perfkit.optim import shard_bench

    cfg = config.override(config.load("sharding", smoke=args.smoke), config.parse_sets(args.set))
    reference = Path(args.reference) if args.reference else None
    # @record: a failing rank writes its traceback to the error file torchrun names, and torchrun reports it
    return record(shard_bench.main)(cfg, Path(args.out), args.mode, reference)


def add_shard_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard-bench", help="one tensor-parallel rank (run under torchrun --standalone --nproc-per-node N)")
    p.add_argument("--out", required=True, help="folder for result.json (rank 0), ready markers and the reference")
    p.add_argument("--mode", choices=("full", "load"), default="full", help="load: memory and exactness only, no timings")
    p.add_argument("--reference", help="the 1-rank run's reference.pt; without it this run builds one (run it at N = 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override, e.g. sharding.embedding=vocab")
    p.add_argument("--smoke", action="store_true", help="apply params.yaml's smoke overrides")
    p.set_defaults(func=_shard_bench)


def _mlflow(args: argparse.Namespace) -> int:
    from perfkit import config, tracking

    made = tracking.import_committed(config.find_root())
    print(json.dumps({"imported_runs": len(made), "uri": tracking.tracking_uri(config.find_root())}))
    return 0


def _site(args: argparse.Namespace) -> int:
    from perfkit import config, screenshots, tracking
    from perfkit.stages import report

    root = config.find_root()
    cfg = config.load("report", root=root)
    result = report.run(cfg, record=False)  # reads the committed results and history, measures and records nothing
    made = tracking.import_committed(root) if tracking.enabled() else []
    shots = [str(p.relative_to(root)) for p in screenshots.take_all(root, cfg.out_dir / "site")] if args.screenshots else []
    print(
        json.dumps(
            {
                "site": str(cfg.out_dir / "site" / "index.html"),
                "verdict": result.verdict(),
                "mlflow_runs_imported": len(made),
                "screenshots": shots,
            }
        )
    )
    return 0


def add_site(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "site",
        help="the published site from the committed results (experiments/report/site/), and "
        "those results imported into MLflow; measures nothing, adds no run to experiments/history.json",
    )
    p.add_argument("--screenshots", action="store_true", help="and take the README's screenshots of it again (docs/img/, Chromium)")
    p.set_defaults(func=_site)


def _latest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from perfkit import config, latest

    root = config.find_root()
    if args.write:
        changed = latest.rewrite(Path(args.write), config.experiments_dir(root))
        print(json.dumps({"written": args.write, "changed": changed}))
    else:
        print(latest.table(config.experiments_dir(root)))
    return 0


def add_latest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latest", help="the latest results table from the committed metrics.json files")
    p.add_argument("--write", metavar="README", help="replace the table between its markers in this file")
    p.set_defaults(func=_latest)


def add_mlflow(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mlflow",
        help="`mlflow import`: the committed results as MLflow runs (perfkit.source=committed@"
        "COMMIT), once each, for the UI and `perfkit compare`",
    )
    p.add_argument("action", choices=["import"])
    p.set_defaults(func=_mlflow)


def _history(args: argparse.Namespace) -> int:
    from perfkit import config, history, stages

    root = config.find_root()
    path = config.experiments_dir(root) / history.HISTORY_FILE
    names = [n for n, s in stages.registry().items() if s.notebook and n != "report"]
    added = [history.record(path, run) and run["run"] for run in history.backfill(root, args.revisions, names)]
    print(json.dumps({"history": str(path), "runs_recorded": added, "runs": len(history.load(path))}))
    return 0


def add_history(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "history",
        help="`history backfill REV...`: record the runs committed at these revisions (their "
        "metrics.json) in experiments/history.json, for runs made before it existed",
    )
    p.add_argument("action", choices=["backfill"])
    p.add_argument("revisions", nargs="+", metavar="REV")
    p.set_defaults(func=_history)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_prepare, add_stage, add_stages, add_env, add_serve, add_load, add_shard_bench, add_compare, add_model,
    add_gpu_check, add_gpu_probe, add_mlflow, add_site, add_latest, add_history, add_export,
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perfkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"perfkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except PerfkitError as exc:
        print(f"perfkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
