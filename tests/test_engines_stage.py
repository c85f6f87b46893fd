"""The engines stage: each effect on both engines, end to end in smoke mode with a fake second engine, and the
"not built" path, which measures nothing and leaves every other stage's results as they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import yaml
from conftest import smoke_experiments
from fakes import fake_llama_cpp as fake

from perfkit import results
from perfkit.measure import Spread
from perfkit.models import default_gguf_path
from perfkit.stage import run_stage
from perfkit.stages.engines.result import Effect


def test_the_engines_stage_measures_every_effect_on_both_engines_with_a_fake_llama_cpp(perfkit_root: Path, tmp_path: Path) -> None:
    bin_dir = fake.install(tmp_path / "bin")
    f32 = tmp_path / "smollm2-f32.gguf"
    shutil.copy(default_gguf_path(), f32)  # a real GGUF, so its tensor types are read from the file
    params = perfkit_root / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["engines"] |= {"llama_cpp_bin": str(bin_dir), "f32_gguf": str(f32), "gguf_dir": str(tmp_path / "quantized")}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    from test_baseline_batching import _result, _variant

    # perfkit's side of batching is the batching stage's: continuous-8 over sequential, 2.0 then 3.0 paired by round
    seq = _variant("sequential", "sequential", 1, [10.0, 12.0], [10.0, 12.0])
    cont = _variant("continuous-b8", "continuous", 8, [20.0, 36.0], [20.0, 36.0])
    results.save(_result(seq, cont), smoke_experiments(perfkit_root) / "batching")
    summary = json.loads(run_stage("engines", smoke=True, root=perfkit_root).read_text())["summary"]
    assert summary["llama_cpp"] == "built"
    assert summary["batching_perfkit_ratio"] == 2.5
    assert summary["precision_8bit_llama_ratio"] == fake.FASTER["q8_0"]  # the fake benches Q8_0 at twice F32
    assert summary["q8_0_top1_agreement_pct"] == fake.SAME_TOP1_PCT
    assert "precision_8bit_perfkit_ratio" not in summary  # no quantization result in this root: nothing to set beside it
    assert summary["effects"] == 3  # batching and two prefix lengths; no precision pair without the reference's figures
    assert summary["verdict"].endswith("not measured on both: 16-bit weights, 8-bit weights, 4-bit weights")
    out = smoke_experiments(perfkit_root) / "engines"
    effects = pd.read_csv(out / "effects.csv").to_dict("records")
    measured = {(e["effect"], e["engine"]) for e in effects if e["ratio"] == e["ratio"]}
    assert {("batching", "perfkit"), ("batching", "llama.cpp")} <= measured
    assert {("prefix reuse, " + e["effect"].split(", ")[1], "llama.cpp") for e in effects if e["effect"].startswith("prefix")} <= measured
    served = pd.read_csv(out / "served.csv")  # llama.cpp's arms only: perfkit's are the batching stage's
    assert sorted(set(served["arm"])) == ["1 slot", "8 slots"] and set(served["engine"]) == {"llama.cpp"}
    assert (served.groupby("arm").size() == 2).all() and (served["error_rate"] == 0).all()  # smoke: 2 rounds each
    assert served["endpoint"].str.startswith("llama.cpp llama-server").all()
    precision = pd.read_csv(out / "precision.csv")
    assert set(precision["precision"]) == {"F32", "Q8_0"} and precision["tensor_types"].str.contains("Q4_1").all()
    page = (out / "engines.html").read_text()
    assert "already rounded to 4 bits" in page and "quantization stage has no saved result" in page


def test_without_llama_cpp_the_stage_says_not_built_and_changes_no_other_result(perfkit_root: Path, tmp_path: Path) -> None:
    params = perfkit_root / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["engines"] |= {"llama_cpp_bin": str(tmp_path / "empty"), "f32_gguf": str(tmp_path / "none.gguf")}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    other = smoke_experiments(perfkit_root) / "baseline" / "metrics.json"
    other.parent.mkdir(parents=True)
    other.write_text('{"summary": {"throughput_tok_s": 12.5}}')
    summary = json.loads(run_stage("engines", smoke=True, root=perfkit_root).read_text())["summary"]
    assert summary["llama_cpp"] == "not built" and summary["build_command"] == "make llama-server"
    assert "llama-server" in summary["missing"] and "none.gguf" in summary["missing"]
    assert other.read_text() == '{"summary": {"throughput_tok_s": 12.5}}'
    assert sorted(p.name for p in smoke_experiments(perfkit_root).iterdir()) == ["baseline", "engines"]
    assert "make llama-server" in (smoke_experiments(perfkit_root) / "engines" / "engines.html").read_text()


def test_an_effect_transfers_only_when_both_intervals_clear_one_on_the_same_side() -> None:
    faster, slower, unsure = Spread((1.9, 2.0, 2.1)), Spread((0.5, 0.52, 0.48)), Spread((0.8, 1.3, 1.0))
    assert Effect("k", "n", "w", faster, Spread((1.95, 2.05, 2.0))).judgement().startswith("transfers, and so does its size")
    assert Effect("k", "n", "w", faster, Spread((3.9, 4.0, 4.1))).judgement().startswith("transfers in direction, not in size")
    assert Effect("k", "n", "w", faster, slower).transfers is False
    assert Effect("k", "n", "w", faster, unsure).transfers is None and "llama.cpp" in Effect("k", "n", "w", faster, unsure).judgement()
    assert Effect("k", "n", "w", None, faster).judgement() == "not measured on both engines"


def test_a_claim_whose_effect_does_not_transfer_says_so_in_its_why() -> None:
    from dataclasses import replace

    from perfkit.claims import Check, judge_summary
    from perfkit.stages.report import StageFigures, with_transfer

    check = Check("C4", "speed-up", "quantization", "int8_dynamic_speedup", 2.3, "x", effect="precision_8bit")
    result = judge_summary([check], {"int8_dynamic_speedup": 2.9})[0]
    split = {"precision_8bit_transfers": False, "precision_8bit_perfkit_ratio": 2.9, "precision_8bit_llama_ratio": 0.8}
    assert "does not transfer (engines stage: 0.80x there against 2.90x" in with_transfer(result, check, StageFigures(split, {})).why
    assert with_transfer(result, check, StageFigures({"precision_8bit_transfers": True}, {})).why == result.why
    assert with_transfer(result, check, StageFigures({"llama_cpp": "not built"}, {})).why == result.why
    assert with_transfer(result, replace(check, effect=None), StageFigures(split, {})).why == result.why
