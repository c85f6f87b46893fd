"""The optimized stage's ablation: which sets of optimizations it serves, and what each step is called.

Every set of optimizations a step needs is an arm of the stage's interleaved rounds (with two
optimizations, a 2 x 2 factorial: baseline, each alone, both), so every step has its own rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfkit.stages.optimized.choose import COLD_START, Choice


@dataclass(frozen=True)
class AblationStep:
    """One ablation step: `kind` add (the waterfall) or leave out (of the full stack), served as the arm `arm` of the
    stage's interleaved rounds (an arm serves each distinct set of optimizations once per round)."""

    name: str
    kind: str
    areas: tuple[str, ...]
    arm: str


def arm_name(areas: tuple[str, ...], every: tuple[str, ...]) -> str:
    """The rounds' name for a set of optimizations: baseline (none), optimized (all), else "batching only", ..."""
    return "baseline" if not areas else "optimized" if set(areas) == set(every) else " + ".join(areas) + " only"


def ablated(applied: list[Choice]) -> list[Choice]:
    """The applied choices that act on the load: a cold-start lever changes nothing a load measures (the cold-start
    block measures it)."""
    return [c for c in applied if c.area != COLD_START]


def ablation_plan(applied: list[Choice]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(step name, kind, areas on) for the waterfall (one added at a time, in order) and each left out of the full stack."""
    areas = [c.area for c in ablated(applied)]
    plan = [("baseline" if i == 0 else "+ " + areas[i - 1], "add", tuple(areas[:i])) for i in range(len(areas) + 1)]
    if len(areas) > 1:
        plan += [(f"full − {a}", "leave out", tuple(x for x in areas if x != a)) for a in areas]
    return plan
