"""bench/engines.py: the issue's two targets read as paired per-round ratios of perfkit over llama.cpp."""

from __future__ import annotations

import pytest
from conftest import bench_script

bench = bench_script("engines")


def _rounds(*tok_s: float) -> list[dict]:
    return [{"tok_s": t} for t in tok_s]


def test_the_ratio_pairs_rounds_so_a_drift_shared_by_both_engines_cancels() -> None:
    (one, eight, *_), batch = bench.PAIRS, bench.BATCH
    rounds = {
        one[0]: _rounds(10.0, 20.0, 15.0),  # the machine twice as fast in round 2: both engines see it
        one[1]: _rounds(20.0, 40.0, 30.0),
        eight[0]: _rounds(60.0, 30.0, 45.0),
        eight[1]: _rounds(60.0, 30.0, 45.0),
        f"perfkit fp32 unpacked continuous-b{batch}": _rounds(1.0, 1.0, 1.0),  # in no pair
    }
    got = {p["perfkit"]: p for p in bench.paired_ratios(rounds)}
    assert got[one[0]]["ratio"] == pytest.approx(0.5) and got[one[0]]["ci_high"] == pytest.approx(0.5)
    assert got[one[0]]["met"] is False and got[one[0]]["rounds"] == 3  # 0.5x against the 0.9x target
    assert got[eight[0]]["ratio"] == pytest.approx(1.0) and got[eight[0]]["met"] is True
    assert len(got) == 2


def test_a_pair_whose_llama_side_did_not_run_is_left_out_and_a_wide_interval_is_undecided() -> None:
    (one, eight, *_) = bench.PAIRS
    assert bench.paired_ratios({one[0]: _rounds(10.0, 12.0)}) == []
    wide = bench.paired_ratios({eight[0]: _rounds(50.0, 80.0), eight[1]: _rounds(60.0, 60.0)})
    assert len(wide) == 1 and wide[0]["ci_low"] < 1.0 < wide[0]["ci_high"] and wide[0]["met"] is None


def test_both_fast_forms_are_paired_with_llama_cpp_at_equal_precision_and_width() -> None:
    names = {v["name"] for v in bench.variants(bench.config.find_root())}
    assert [(p[0], p[1]) for p in bench.PAIRS] == [
        ("perfkit fp32 prepacked sequential", "llama.cpp F32 np1"),
        (f"perfkit fp32 prepacked continuous-b{bench.BATCH}", f"llama.cpp F32 np{bench.BATCH}"),
        ("perfkit fp32 compiled sequential", "llama.cpp F32 np1"),
        (f"perfkit fp32 compiled continuous-b{bench.BATCH}", f"llama.cpp F32 np{bench.BATCH}"),
    ]
    assert {p[0] for p in bench.PAIRS} <= names  # every pair's perfkit side is a variant the bench runs
