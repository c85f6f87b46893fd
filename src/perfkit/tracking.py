"""The one place that knows MLflow (docs/design.md §3) and writes a stage's metrics.json.

Layout: one experiment per stage (`perfkit/<stage>`), a parent run per stage execution, a nested
run per variant. The parent run belongs to the stage runner (`perfkit.stage`), which creates it,
hands its id to the notebook's kernel as `MLFLOW_RUN_ID` and ends it FINISHED or FAILED itself;
the notebook only resumes it with `start(cfg)`. Run by hand (no `MLFLOW_RUN_ID`), `start` opens a
fresh run in the same experiment, so interactive runs land beside the pipeline's.

The embedded store is SQLite under `mlflow/`; with SQLite the artifact location must be given as
an absolute path when the experiment is created, or artifacts land in `./mlruns` under whatever
directory the process started in.

A stage killed with `kill -9` cannot end its own run, which would stay RUNNING for ever. So each
parent run records the process that owns it (`perfkit.pid`, `perfkit.host`, `perfkit.pid_start`:
the process's start time, which tells a reused pid apart), and the next run of the stage marks
every run of that stage still RUNNING whose owner is gone -- and the variant runs nested under
it -- FAILED, with the reason in `perfkit.failed_reason`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfkit import config
from perfkit.config import Config
from perfkit.hardware import environment, resolve_device
from perfkit.processes import RUN_ID_ENV, process_started

if TYPE_CHECKING:
    import mlflow
    from mlflow.tracking import MlflowClient

# "off": no MLflow at all, never imported (`perfkit gpu-check` on a machine without it): variant runs and artifacts
# are skipped, metrics.json and the tables are still written.
TRACKING_ENV = "PERFKIT_TRACKING"


def enabled() -> bool:
    return os.environ.get(TRACKING_ENV, "on") != "off"


def _active_run() -> mlflow.ActiveRun | None:
    """The active stage run, or None: none was started, or tracking is off."""
    if not enabled():
        return None
    try:
        import mlflow
    except ImportError:  # a machine without MLflow (a GPU box) running a stage or loading a result
        return None
    return mlflow.active_run()


def tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI` if set (a shared server), else the embedded SQLite store under `mlflow/`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    (root / "mlflow").mkdir(exist_ok=True)
    return f"sqlite:///{(root / 'mlflow' / 'mlflow.db').resolve()}"


def client(root: Path) -> MlflowClient:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(stage: str, root: Path) -> str:
    """Id of the stage's experiment, created with an absolute artifact location if new."""
    c = client(root)
    name = f"perfkit/{stage}"
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (root / "mlflow" / "artifacts" / stage).resolve()
    location.mkdir(parents=True, exist_ok=True)
    return c.create_experiment(name, artifact_location=location.as_uri())


def stage_tags(cfg: Config) -> dict[str, str]:
    """The tags of a stage's run; `params.sha` hashes the resolved config the stage ran with, not params.yaml's bytes."""
    env = environment(cfg.root)
    device = cfg.hardware.device
    resolved = resolve_device(device) if device != "cuda" or env["cuda_available"] else None
    return {
        "perfkit.stage": cfg.stage,
        "perfkit.source": "measured",
        "dvc.stage": cfg.stage,
        "git.commit": env.get("git_commit", "unknown"),
        "params.sha": cfg.sha256(),
        "hardware.device": resolved.type if resolved is not None else device,
        "hardware.name": env.get("gpu_name") or env["cpu_model"],
    }


def owner_tags() -> dict[str, str]:
    """The process that owns a run: pid, host and the pid's start time (a reused pid has another)."""
    pid = os.getpid()
    return {"perfkit.pid": str(pid), "perfkit.host": socket.gethostname(), "perfkit.pid_start": repr(process_started(pid))}


def create_stage_run(cfg: Config) -> str:
    """Open the parent run of one stage execution; the caller must `end_stage_run` it."""
    c = client(cfg.root)
    tags = stage_tags(cfg) | owner_tags() | {"perfkit.smoke": str(cfg.smoke).lower(), "mlflow.runName": cfg.stage}
    return c.create_run(experiment_id(cfg.stage, cfg.root), tags=tags, run_name=cfg.stage).info.run_id


def _owner_gone(tags: Mapping[str, str]) -> str | None:
    """Why the run's owner is gone, or None while it lives (or lives on another host, where we cannot tell)."""
    if "perfkit.pid" not in tags or tags.get("perfkit.host") != socket.gethostname():
        return None
    pid = int(tags["perfkit.pid"])
    started = process_started(pid)
    if started is not None and repr(started) == tags.get("perfkit.pid_start"):
        return None
    return f"its process {pid} on {tags['perfkit.host']} ended without ending the run (killed: SIGKILL, OOM, power)"


def fail_abandoned_runs(stage: str, root: Path) -> list[str]:
    """Mark RUNNING runs of `stage` whose owning process is gone FAILED (their nested runs too); returns their ids."""
    c = client(root)
    found = c.get_experiment_by_name(f"perfkit/{stage}")
    if found is None:
        return []
    running = c.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    by_id = {r.info.run_id: r for r in running}
    reasons = {r.info.run_id: why for r in running if (why := _owner_gone(r.data.tags))}
    for run in running:  # a variant run under an abandoned or ended parent was abandoned with it
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent and run.info.run_id not in reasons and (parent in reasons or parent not in by_id):
            why = reasons.get(parent, "that run has ended")
            reasons[run.info.run_id] = f"its parent run {parent} is no longer running: {why}"
    for run_id, why in reasons.items():
        c.set_tag(run_id, "perfkit.failed_reason", why)
        c.set_terminated(run_id, status="FAILED")
    return list(reasons)


def end_stage_run(run_id: str, root: Path, status: str) -> None:
    client(root).set_terminated(run_id, status=status)


def start(cfg: Config) -> mlflow.ActiveRun:
    """Resume the runner's run (or open one when run by hand) and log the config and environment."""
    import mlflow

    client(cfg.root)
    if mlflow.active_run() is not None:
        return mlflow.active_run()  # type: ignore[return-value]
    # Popped, not read: mlflow.start_run() resumes MLFLOW_RUN_ID whenever it is set, nested runs included.
    run_id = os.environ.pop(RUN_ID_ENV, None)
    if run_id:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(experiment_id=experiment_id(cfg.stage, cfg.root), run_name=f"{cfg.stage} (interactive)")
        mlflow.set_tags(stage_tags(cfg) | {"perfkit.smoke": str(cfg.smoke).lower()})
    mlflow.log_params({k: _short(v) for k, v in cfg.flat().items()})
    mlflow.log_dict(environment(cfg.root), "environment.json")
    mlflow.log_dict(json.loads(cfg.model_dump_json(exclude={"root"})), "config.json")
    return run


def _short(value: Any) -> Any:
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a metrics mapping (MLflow takes numbers only)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    return out


def log_variant(name: str, metrics: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> None:
    """A nested run for one variant under the active stage run: numbers as metrics, the rest as tags.

    `params` are only the settings this variant ran with that differ from the stage's resolved config
    (the parent run holds the whole config and its hash, `params.sha`, which the nested run repeats):
    a full copy per variant costs ~0.1 s a parameter, and a stage may log dozens of variants.
    """
    if not enabled():
        return
    import mlflow

    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError("log_variant needs the stage run: call perfkit.tracking.start(cfg) first")
    parent_tags = mlflow.get_run(parent.info.run_id).data.tags
    inherited = {k: v for k, v in parent_tags.items() if k.startswith("prov.")}  # provenance: every run carries it
    with mlflow.start_run(run_name=name, nested=True, experiment_id=parent.info.experiment_id):
        mlflow.set_tags(inherited | {"perfkit.variant": name, "params.sha": parent_tags.get("params.sha", "")})
        if params:
            mlflow.log_params({k: _short(v) for k, v in params.items()})
        mlflow.log_metrics(numeric(metrics))
        texts = {f"result.{k}": _short(v) for k, v in metrics.items() if isinstance(v, str)}
        if texts:
            mlflow.set_tags(texts)


@contextmanager
def step_run(name: str, params: Mapping[str, Any] | None = None) -> Iterator[Callable[[int, Mapping[str, Any]], None]]:
    """A nested run whose metrics arrive step by step (a training curve); yields `log(step, metrics)`.

    Without a stage run (a library call outside a stage) the logger does nothing.
    """
    parent = _active_run()
    if parent is None:
        yield lambda _step, _metrics: None
        return
    import mlflow

    with mlflow.start_run(run_name=name, nested=True, experiment_id=parent.info.experiment_id):
        mlflow.set_tag("perfkit.variant", name)
        if params:
            mlflow.log_params({k: _short(v) for k, v in params.items()})
        yield lambda step, metrics: mlflow.log_metrics(numeric(metrics), step=step)


def set_tags(tags: Mapping[str, str]) -> None:
    """Tags on the active stage run (nothing without one: a stage run outside a notebook)."""
    if _active_run() is not None:
        import mlflow

        mlflow.set_tags({k: _short(v) for k, v in tags.items()})


def write_metrics(cfg: Config, results: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write experiments/<stage>/metrics.json atomically and log its summary on the stage run.

    `results` is `{variant: {metric_with_unit: value}, "summary": {...}}` (docs/design.md §4).
    """
    if "summary" not in results:
        raise ValueError("metrics need a 'summary' entry")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.out_dir / "metrics.json"
    fd, tmp = tempfile.mkstemp(dir=cfg.out_dir, prefix=".metrics.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(results, f, indent=2, sort_keys=False, default=float)
        f.write("\n")
    os.replace(tmp, path)
    if _active_run() is not None:
        import mlflow

        summary = results["summary"]
        mlflow.log_metrics(numeric(summary))
        mlflow.set_tags({f"summary.{k}": _short(v) for k, v in summary.items() if isinstance(v, str)})
        mlflow.set_tags({f"prov.{k}": _short(v) for k, v in (summary.get("provenance") or {}).items()})
        mlflow.log_artifact(str(path))
    return path


def write_table(cfg: Config, name: str, frame: Any) -> Path:
    """Write a pandas frame to experiments/<stage>/<name>.csv (a DVC plot) and log it as an artifact."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.out_dir / f"{name}.csv"
    frame.to_csv(path, index=False)
    if _active_run() is not None:
        import mlflow

        mlflow.log_artifact(str(path))
    return path


def log_figure(figure: Any, name: str) -> None:
    if _active_run() is not None:
        import mlflow

        mlflow.log_figure(figure, f"{name}.png")


COMMITTED = "committed"  # `perfkit.source` of a run imported from the committed results; a stage's own run is "measured"


def import_committed(root: Path) -> list[str]:
    """Log each stage's committed result (experiments/<stage>/) as a FINISHED run, so the MLflow UI and `perfkit
    compare` have the reference run on a fresh clone. Tagged `perfkit.source=committed@<commit>` with the run's
    provenance (machine, date); keyed by stage, commit and start time, so importing twice adds nothing. Returns the
    ids of the runs it made."""
    from mlflow.entities import Metric

    c = client(root)
    made = []
    for path in sorted(config.experiments_dir(root).glob("*/metrics.json")):
        stage, summary = path.parent.name, json.loads(path.read_text())["summary"]
        prov = summary.get("provenance") or {}
        commit, started = str(prov.get("git_commit", "unknown")), str(prov.get("started_at", ""))
        key = f"{stage}@{commit}@{started}"
        exp = experiment_id(stage, root)
        if c.search_runs([exp], filter_string=f"tags.`perfkit.committed_key` = '{key}'", max_results=1):
            continue
        try:
            start_ms: int | None = int(datetime.fromisoformat(started).timestamp() * 1000)
        except ValueError:  # no or an unreadable start time: MLflow's own clock
            start_ms = None
        tags = {
            "perfkit.stage": stage,
            "dvc.stage": stage,
            "git.commit": commit,
            "perfkit.source": f"{COMMITTED}@{commit}",
            "perfkit.smoke": str(prov.get("smoke", False)).lower(),
            "hardware.name": str(prov.get("cpu_model", "")),
            "mlflow.runName": f"{stage} (committed {commit[:10]})",
        }
        tags |= {f"prov.{k}": str(_short(v)) for k, v in prov.items()}
        tags |= {f"summary.{k}": str(_short(v)) for k, v in summary.items() if isinstance(v, str)}
        run_id = c.create_run(exp, start_time=start_ms, tags=tags).info.run_id
        at = start_ms or 0
        c.log_batch(run_id, metrics=[Metric(k, v, at, 0) for k, v in numeric(summary).items()])
        for artifact in sorted(path.parent.glob("*.csv")) + [path, path.parent / "result.json"]:
            if artifact.is_file():
                c.log_artifact(run_id, str(artifact))
        wall_ms = int(float(prov.get("wall_s", 0)) * 1000)
        c.set_tag(run_id, "perfkit.committed_key", key)  # last: an import cut short is redone, not skipped
        c.set_terminated(run_id, status="FINISHED", end_time=at + wall_ms if start_ms else None)
        made.append(run_id)
    return made
