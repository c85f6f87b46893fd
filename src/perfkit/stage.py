"""Run one stage: papermill (`rerun = True`) -> HTML -> metrics.json + result.json, owned by an MLflow parent run.

The runner, not the notebook, owns the stage's MLflow run. A kernel whose cell raised still exits
cleanly and MLflow's exit hook would mark the run FINISHED; so the runner creates the run, hands
its id to the kernel as `MLFLOW_RUN_ID`, and ends it itself: FINISHED only once the executed
notebook, the HTML report and metrics.json all exist; FAILED otherwise, with any metrics.json
removed so that DVC never caches half a result.

Before the run starts, runs of the stage that a killed process left RUNNING are marked FAILED
(`tracking.fail_abandoned_runs`), and `processes.preflight` checks that no leftover perfkit process
of this checkout is alive and that the machine is quiet (`measure.max_load`): a full run refuses
to measure otherwise; a smoke run, or any run under CI (`CI` set), records the finding as the
run's `perfkit.preflight` tag and goes on.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from perfkit import config, processes, provenance, stages, tracking
from perfkit.errors import PerfkitError
from perfkit.results import RESULT_FILE

KERNEL = "perfkit"
log = logging.getLogger("perfkit.stage")


class StageError(PerfkitError, RuntimeError):
    """A stage that did not produce its report and metrics; its MLflow run is marked FAILED."""


def _check_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        raise StageError(
            f"Jupyter kernel {KERNEL!r} is not registered; `make setup` runs `python -m ipykernel install --sys-prefix --name {KERNEL}`"
        ) from None


def to_html(notebook: Path, html: Path) -> Path:
    """The executed notebook as a self-contained report page (`perfkit.pages`)."""
    from perfkit import pages

    return pages.write(notebook, html)


def run_stage(stage: str, *, smoke: bool = False, root: Path | None = None, cell_timeout_s: int = 3600) -> Path:
    """Execute notebooks/<stage>.ipynb into experiments/<stage>/ (a smoke run: its scratch root); returns the
    metrics.json path. A failed run leaves neither metrics.json nor result.json."""
    root = Path(root).resolve() if root else config.find_root()
    cfg = config.load(stage, smoke=smoke, root=root)  # a bad params.yaml fails here, before any heavy work
    spec = stages.get(stage)
    source = root / "notebooks" / f"{stage}.ipynb"
    if not spec.notebook:
        raise StageError(f"{stage!r} has no notebook: run `python -m perfkit {stage}`")
    if not source.is_file():
        raise StageError(f"{source} not found; `perfkit stage new {stage}` writes it")
    _check_kernel()
    out_dir = cfg.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    executed, html, metrics = out_dir / f"{stage}.ipynb", out_dir / f"{stage}.html", out_dir / "metrics.json"
    for stale in (metrics, out_dir / RESULT_FILE):  # a stale file must never pass for this run's result
        stale.unlink(missing_ok=True)

    abandoned = tracking.fail_abandoned_runs(stage, root)
    if abandoned:
        log.warning("%s: marked %d abandoned run(s) FAILED: %s", stage, len(abandoned), ", ".join(abandoned))
    flags, busy = processes.preflight(root, cfg.measure.max_load, refuse=not (smoke or os.environ.get("CI")))
    run_id = tracking.create_stage_run(cfg)
    if flags:
        tracking.client(root).set_tag(run_id, "perfkit.preflight", "; ".join(flags))
    saved = {k: os.environ.get(k) for k in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "PERFKIT_ROOT", provenance.BUSY_CORES_ENV)}
    os.environ.update(
        {
            "MLFLOW_RUN_ID": run_id,
            "MLFLOW_TRACKING_URI": tracking.tracking_uri(root),
            "PERFKIT_ROOT": str(root),
            provenance.BUSY_CORES_ENV: f"{busy:.3f}",
        }
    )
    started = time.perf_counter()
    previous_sigterm = _fail_on_sigterm()
    try:
        import papermill

        papermill.execute_notebook(
            str(source),
            str(executed),
            parameters={"stage": stage, "smoke": smoke, "rerun": True},
            kernel_name=KERNEL,
            cwd=str(source.parent),
            execution_timeout=cell_timeout_s,
            progress_bar=False,
            log_output=False,
        )
        to_html(executed, html)
        if not metrics.is_file():
            raise StageError(f"{stage}: the notebook finished without writing {metrics}")
        c = tracking.client(root)
        c.log_artifact(run_id, str(html))
        c.log_metric(run_id, "stage_wall_s", time.perf_counter() - started)
    except BaseException as exc:
        metrics.unlink(missing_ok=True)
        (out_dir / RESULT_FILE).unlink(missing_ok=True)
        tracking.end_stage_run(run_id, root, "FAILED")
        if executed.is_file():
            try:
                to_html(executed, html)  # the failed notebook's report still shows where it stopped
            except Exception:  # the original error matters more than a failed render
                pass
        if isinstance(exc, StageError):
            raise
        raise StageError(f"stage {stage!r} failed: {exc}") from exc
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    tracking.end_stage_run(run_id, root, "FINISHED")
    return metrics


def _fail_on_sigterm() -> signal.Handlers | None:
    """Turn SIGTERM (`timeout`, `kill`, a CI cancel) into an exception, so the run is still marked FAILED.

    Returns the handler it replaced, or None off the main thread, where handlers cannot be set.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum: int, frame: object) -> None:
        raise StageError("stage terminated by SIGTERM")

    return signal.signal(signal.SIGTERM, terminate)
