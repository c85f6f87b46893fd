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


def _prepare(args: argparse.Namespace) -> int:
    from perfkit import config, prepare

    prepare.main(config.find_root())
    return 0


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="convert the embedded default model (SmolLM2 GGUF -> safetensors)")
    p.set_defaults(func=_prepare)


def _stage(args: argparse.Namespace) -> int:
    from perfkit.stage import run_stage

    metrics = run_stage(args.name, smoke=args.smoke, cell_timeout_s=args.cell_timeout)
    print(json.dumps({"stage": args.name, "metrics": str(metrics)}))
    return 0


def add_stage(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stage", help="run one stage's notebook (papermill -> HTML -> metrics.json, MLflow)")
    p.add_argument("name", help="stage name: a notebook under notebooks/")
    p.add_argument("--smoke", action="store_true", help="shrink the stage to seconds (tests, CI)")
    p.add_argument("--cell-timeout", type=int, default=3600, help="seconds one notebook cell may run")
    p.set_defaults(func=_stage)


def _env(args: argparse.Namespace) -> int:
    from perfkit import config
    from perfkit.hardware import environment

    print(json.dumps(environment(config.find_root()), indent=2))
    return 0


def add_env(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="print the environment every run records")
    p.set_defaults(func=_env)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_prepare, add_stage, add_env]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perfkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"perfkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from perfkit.config import ConfigError
    from perfkit.models import ModelNotFoundError
    from perfkit.stage import StageError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, ModelNotFoundError, StageError) as exc:
        print(f"perfkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
