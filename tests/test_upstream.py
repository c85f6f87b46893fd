"""What the optimized and capacity stages read of other stages: typed facts from the saved results, not metrics keys."""

from __future__ import annotations

from dataclasses import replace

from test_baseline_batching import _result as batching_result
from test_baseline_batching import _variant
from test_quantization import _fake

from perfkit import results, upstream
from perfkit.upstream import Schedulers


def test_saved_quantization_and_batching_results_are_read_as_typed_facts(tmp_path):
    quant = _fake({"fp32": 10.0, "bf16": 16.0, "int8-dynamic": 30.0}, {"fp32": 1.0, "bf16": 0.95, "int8-dynamic": 0.5})
    results.save(quant, tmp_path / "quantization")
    batching = batching_result(
        _variant("sequential", "sequential", 1, [20.0, 22.0, 24.0], [25.0] * 3),
        _variant("dynamic-b8", "dynamic", 8, [70.0, 80.0, 90.0], [100.0] * 3),
    )
    results.save(batching, tmp_path / "batching")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "result.json").write_text('{"schema": 1}')  # another version: as if not run

    read = upstream.read(tmp_path, ("quantization", "batching", "cache", "transport"))
    assert read.missing == ("cache", "transport") and read.cache_hit_rate is None and read.transport is None
    assert read.batching == Schedulers({"sequential": (22.0, 1), "dynamic": (80.0, 8)}, {"dynamic": (3.5, 80.0 / 22.0, 3.75)})
    precision = read.quantization
    assert precision is not None and precision.gate == 0.9 and precision.widest == 1
    assert set(precision.schemes) == {"fp32", "bf16", "int8-dynamic"}  # fp16 was skipped: not a fact
    assert precision.schemes["bf16"].speedup == 1.6 and precision.schemes["int8-dynamic"].top1_agreement == 0.5


def test_the_capacity_stage_serves_the_stack_the_saved_optimized_result_applied(tmp_path):
    from test_optimized import MEASURED
    from test_optimized import _result as optimized_result

    from perfkit.stages.optimized.choose import choose

    assert upstream.optimized_stack(tmp_path) == (None, None)  # not run
    results.save(replace(optimized_result([0.5, 0.5, 0.5]), choices=choose(MEASURED, min_kept_pct=89)), tmp_path / "optimized")
    assert upstream.optimized_stack(tmp_path) == (
        {"serving.scheduler": "dynamic", "serving.max_batch_size": 8, "serving.dtype": "bfloat16", "serving.prepared_checkpoint": True},
        None,
    )
    (tmp_path / "optimized" / "result.json").write_text("{not json")
    overrides, why = upstream.optimized_stack(tmp_path)
    assert overrides is None and why  # saved but unreadable: says why, not "not run"
