"""What a stage notebook calls: the same steps for every stage, so the notebook stays thin.

    result = notebook.load(stage, smoke)     # the saved result (result.json): no measurement, no MLflow run
    result = notebook.measure(stage, smoke)  # or (rerun = True) measure: its MLflow run, tables, metrics, result
    notebook.show_table(result)
    notebook.show_figures(result)            # seaborn figures, logged to MLflow when measuring
    notebook.show_conclusion(result)         # sentences computed from the numbers

Opened in JupyterLab, a notebook shows the committed result in seconds; the stage runner passes
`rerun = True`.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

from perfkit import config, provenance, results, stages, tracking
from perfkit.config import Config
from perfkit.stages.base import StageResult, StageSpec

if TYPE_CHECKING:
    import pandas as pd


def _quiet() -> None:
    # Library warnings (tqdm, torchao, torch) belong in the stage log, not on the report page.
    logging.captureWarnings(True)
    warnings.simplefilter("ignore")


def setup(stage: str, smoke: bool = False) -> Config:
    """Load and validate params.yaml for `stage` and open (or resume) its MLflow run."""
    _quiet()
    cfg = config.load(stage, smoke=smoke)
    tracking.start(cfg)
    return cfg


def measure(stage: str, smoke: bool = False) -> StageResult:
    """Run the stage: `setup`, then `run`."""
    return run(setup(stage, smoke))


def load(stage: str, smoke: bool = False) -> StageResult:
    """The result the stage saved last (experiments/<stage>/result.json, a smoke run's under its scratch root), as its
    run returned it: nothing is measured and no MLflow run is opened."""
    _quiet()
    return results.load(config.load(stage, smoke=smoke).out_dir)


def check_plots(spec: StageSpec, tables: dict[str, pd.DataFrame]) -> None:
    """Every DVC plot the stage declares names a table it writes and columns that table has."""
    for plot in spec.plots:
        if plot.table not in tables:
            raise ValueError(f"{spec.name}: plot on {plot.table}.csv, but the stage wrote no table {plot.table!r}")
        for column in (plot.x, plot.y):
            if column not in tables[plot.table].columns:
                raise ValueError(f"{spec.name}: {plot.table}.csv has no column {column!r} (its plot's x/y)")


def run(cfg: Config) -> StageResult:
    """Run the stage and write what DVC and MLflow keep: one CSV per table, then metrics.json."""
    spec = stages.get(cfg.stage)
    prov = provenance.begin(cfg, spec)
    tracking.set_tags(provenance.tags(prov))  # before the stage runs: its variant runs copy them
    result = spec.runner()(cfg).with_provenance(prov := provenance.finish(prov))
    tracking.set_tags(provenance.tags(prov))
    tables = result.all_tables()
    check_plots(spec, tables)
    for name, frame in tables.items():
        tracking.write_table(cfg, name, frame)
    tracking.write_metrics(cfg, result.metrics())
    results.save(result, cfg.out_dir)
    return result


def show_table(result: StageResult) -> None:
    from IPython.display import display

    from perfkit.pages import number

    display(result.table().style.hide(axis="index").format(number))


def show_figures(result: StageResult) -> None:
    import matplotlib.pyplot as plt
    from IPython.display import display

    for name, figure in result.all_figures().items():
        tracking.log_figure(figure, name)
        display(figure)
        plt.close(figure)


def show_conclusion(result: StageResult) -> None:
    """The conclusion as markdown. Raw, not `IPython.display.Markdown`: that one fetches a text that starts with
    "http" as a URL (a conclusion about an external endpoint starts with its address)."""
    from IPython.display import display

    display({"text/markdown": result.full_conclusion()}, raw=True)
