"""What every stage declares and what every stage returns.

A stage is a module (or a package, past ~400 lines) under `perfkit.stages` with three things:

- its params section, a `perfkit.config.Section` subclass: the `params.yaml` section of the same
  name, validated with every other section by `config.load`, so a typo anywhere is refused;
- `STAGE = StageSpec(...)`: its name, the shared sections it reads, the data it depends on, the
  CSV tables it plots, a version, its time budget on the reference machine (`budget_s`: the stage
  says when it ran over), and where its `run(cfg)` lives (`"module:function"`, imported
  only when the stage runs, so declaring a stage imports no torch);
- `run(cfg) -> StageResult`, a frozen dataclass in the one result shape below.

From these the registry (`perfkit.stages.registry`) gives `config.load` its sections, writes
dvc.yaml (`perfkit stages --dvc`) and the notebook (`perfkit stage new NAME`), and the notebook
helper (`perfkit.stages.notebook`) writes tables, metrics.json and figures the same way for all.
A stage measures and writes figures; it judges no claim (the report stage does, from its summary).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from perfkit import __version__, provenance
from perfkit.layout import CORPUS, MODEL_DIR

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from perfkit.config import Config, Section
    from perfkit.load.runner import LoadRun

MEASURED_DATA = (CORPUS, MODEL_DIR)  # what a stage that runs the default model on the corpus depends on


@dataclass(frozen=True)
class Plot:
    """A DVC plot: column `x` against `y` of experiments/<stage>/<table>.csv."""

    table: str
    x: str
    y: str


@dataclass(frozen=True)
class StageSpec:
    name: str
    title: str
    run: str  # "module:function", imported when the stage runs
    section: type[Section] | None = None
    reads: tuple[str, ...] = ()  # shared params sections
    data: tuple[str, ...] = ()  # files and folders it depends on, relative to the root
    plots: tuple[Plot, ...] = ()
    version: str = "1"
    order: int = 500  # position in dvc.yaml and the report
    upstream: tuple[str, ...] = ()  # stages whose metrics.json it reads ("*": every other notebook stage)
    upstream_file: str = "metrics.json"  # what it reads of them (the report: each stage's saved result.json)
    notebook: bool = True  # False: a plain DVC step with nothing to report (prepare)
    outs: tuple[str, ...] = ()  # extra DVC outputs (uncached)
    code: tuple[str, ...] = ("src/perfkit",)  # the code it depends on
    description: str = ""
    budget_s: float | None = None  # its wall-time budget on a 2-core CPU (the default model, params.yaml as committed)
    prepacks: bool = True  # its timed engines follow `hardware.prepack` (sharding's tensor-parallel layers do not)

    def runner(self) -> Callable[[Config], Any]:
        module, _, func = self.run.partition(":")
        return getattr(importlib.import_module(module), func)

    @property
    def params(self) -> tuple[str, ...]:
        """Every params section the stage reads: its own first."""
        own = (self.name,) if self.section is not None else ()
        return own + tuple(s for s in self.reads if s != self.name)


@dataclass(frozen=True)
class StageResult(ABC):
    """The one result shape. Subclasses are frozen dataclasses.

    `metrics()` is generic: the summary's headline figures plus `verdict`, `version` and `provenance`, which
    `perfkit.stages.notebook.run` attaches to every stage's result (`with_provenance`): the stages
    themselves never build it.
    """

    spec: ClassVar[StageSpec]
    provenance: Mapping[str, Any] | None = field(default=None, kw_only=True, compare=False, repr=False)

    def with_provenance(self, prov: Mapping[str, Any]) -> StageResult:
        from dataclasses import replace

        return replace(self, provenance=dict(prov))

    @abstractmethod
    def variants(self) -> Sequence[Any]:
        """Typed rows, one per variant the stage ran."""

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """Headline figures only (tens of keys), units in the names."""

    @abstractmethod
    def tables(self) -> dict[str, pd.DataFrame]:
        """Per-variant detail: each becomes experiments/<stage>/<name>.csv (the DVC plots read these)."""

    @abstractmethod
    def figures(self) -> dict[str, Figure]:
        """Seaborn figures for the report, by name."""

    @abstractmethod
    def conclusion(self) -> str:
        """Markdown sentences computed from the numbers."""

    def load_runs(self) -> dict[str, LoadRun]:
        """Every load run the result keeps, by a name unique within the stage: what `perfkit export` writes in vLLM's
        result format and what the time-slice table and figure (`perfkit.stages.slices_view`) show. None by default."""
        return {}

    def all_tables(self) -> dict[str, pd.DataFrame]:
        """What the stage writes and shows: its own tables, then its load runs' time slices and trends."""
        from perfkit.stages.slices_view import tables

        return _joined(self.tables(), tables(self.load_runs()))

    def all_figures(self) -> dict[str, Figure]:
        """What the stage's page shows: its own figures, then its load runs' time-slice figure."""
        from perfkit.stages.slices_view import figures

        return _joined(self.figures(), figures(self.load_runs()))

    def headline_table(self) -> tuple[str, pd.DataFrame] | None:
        """A sentence and a table the published site shows first, for the stage whose result is the suite's headline
        (the optimized stack); None for the others."""
        return None

    def verdict(self) -> str:
        """One line for dashboards: the conclusion's first sentence unless a stage says better."""
        first = self.conclusion().strip().split("\n\n")[0]
        return first.split(". ")[0].rstrip(".") + "."

    def measured_cores(self) -> int | None:
        """The CPU count of the machine the result was measured on (its provenance): a page rendered elsewhere must not
        describe the machine it is rendered on. None without provenance."""
        count = (self.provenance or {}).get("cpu_count")
        return int(count) if count else None

    def measured_native_bf16(self) -> bool | None:
        """Whether the measuring machine's CPU had bf16 instructions (its provenance's flags); None where unknown."""
        flags = (self.provenance or {}).get("cpu_flags")
        if not flags or flags == "unknown":
            return None
        return provenance.has_native_bf16(str(flags))

    def notes(self) -> str:
        """Sentences about how the run went (a busy machine, uncommitted code), from its provenance."""
        return " ".join(provenance.notes(self.provenance))

    def full_conclusion(self) -> str:
        """The stage's conclusion, then the notes on how it ran: what the notebook shows."""
        notes = self.notes()
        return self.conclusion() + (f"\n\n{notes}" if notes else "")

    def table(self) -> pd.DataFrame:
        """The table a reader sees first: the first of `tables()`."""
        return next(iter(self.tables().values()))

    def metrics(self) -> dict[str, Any]:
        summary = dict(self.summary())
        summary["verdict"] = self.verdict()
        summary["version"] = f"{__version__}+{self.spec.name}.{self.spec.version}"
        if self.provenance:
            summary["provenance"] = dict(self.provenance)
        return {"summary": summary}


def _joined(own: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    if clash := own.keys() & added.keys():
        raise ValueError(f"a stage's own tables or figures {sorted(clash)} clash with the time-slice view's names")
    return own | added


def named_runs(pairs: Iterable[tuple[str, LoadRun]]) -> dict[str, LoadRun]:
    """`load_runs()` from (name, run) pairs: a name given twice is an error, not a run silently dropped."""
    out: dict[str, LoadRun] = {}
    for name, run in pairs:
        if name in out:
            raise ValueError(f"two load runs named {name!r}")
        out[name] = run
    return out


def rows(items: Sequence[Any]) -> list[Mapping[str, Any]]:
    """Dataclass rows as plain mappings (for DataFrames)."""
    from dataclasses import asdict, is_dataclass

    return [asdict(i) if is_dataclass(i) else dict(i) for i in items]
