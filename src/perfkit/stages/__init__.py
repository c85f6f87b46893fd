"""The stage registry: every stage module under `perfkit.stages`, plus stages that live elsewhere.

A stage is found by its declaration (`STAGE = StageSpec(...)`, see `perfkit.stages.base`): every
module of this package that has one, the entry-point group `perfkit.stages` (an installed package's
stages), and `PERFKIT_STAGES` (comma-separated module names, for a stage in a project's own code
or a test). Declarations import no torch, so listing the stages is cheap.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import lru_cache
from importlib.metadata import entry_points

from perfkit.errors import PerfkitError
from perfkit.stages.base import StageSpec

ENV = "PERFKIT_STAGES"
ENTRY_POINTS = "perfkit.stages"
_NOT_STAGES = {"base", "notebook", "scaffold"}


class UnknownStage(PerfkitError, KeyError):
    """A stage name that no declaration gives."""

    def __str__(self) -> str:
        return str(self.args[0])


def _module_names() -> tuple[str, ...]:
    own = [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_STAGES]
    plugins = [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINTS)]
    extra = [m.strip() for m in os.environ.get(ENV, "").split(",") if m.strip()]
    return tuple(own + plugins + extra)


@lru_cache(maxsize=8)
def _registry(modules: tuple[str, ...]) -> dict[str, StageSpec]:
    found: dict[str, StageSpec] = {}
    for name in modules:
        spec = getattr(importlib.import_module(name), "STAGE", None)
        if not isinstance(spec, StageSpec):
            continue
        if spec.name in found:
            raise PerfkitError(f"stage {spec.name!r} is declared twice ({name} and another module)")
        found[spec.name] = spec
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


def registry() -> dict[str, StageSpec]:
    """Every declared stage by name, in pipeline order."""
    return dict(_registry(_module_names()))


def get(name: str) -> StageSpec:
    stages = registry()
    if name not in stages:
        raise UnknownStage(f"unknown stage {name!r}; stages: {', '.join(stages)}")
    return stages[name]


def upstream(spec: StageSpec) -> tuple[str, ...]:
    """The stages whose metrics.json `spec` reads ("*" means every other stage with a notebook), among those declared."""
    if spec.upstream == ("*",):
        return tuple(n for n, s in registry().items() if s.notebook and n != spec.name)
    known = registry()
    return tuple(u for u in spec.upstream if u in known)  # a stage not in this checkout has no metrics.json to depend on
