"""The optimized stage: the server's precision setting, the choice rules, the paired-round figures, and a smoke run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, smoke_experiments

from perfkit import config
from perfkit.claims import FAILS, HOLDS, INCONCLUSIVE, checks_for
from perfkit.config import ConfigError, CostConfig
from perfkit.hardware import ResourceUsage
from perfkit.load.results import RequestTiming, summarize
from perfkit.load.runner import LoadRun
from perfkit.load.served import ServedRun
from perfkit.stages.optimized.choose import (
    NOT_ON_LOAD,
    NOT_RUN,
    choose,
    choose_batching,
    choose_precision,
    choose_transport,
    read_summaries,
    stack_overrides,
)
from perfkit.stages.optimized.experiment import ablation_plan
from perfkit.stages.optimized.result import AblationStep, OptimizedResult, cold_start_text

QUANT = {"best_scheme": "bf16", "speedup": 1.6, "min_top1_agreement": 0.9,
         "fp32_speedup": 1.0, "fp32_top1_agreement_pct": 100.0,
         "bf16_speedup": 1.6, "bf16_top1_agreement_pct": 95.0,
         "fp16_speedup": 1.7, "fp16_top1_agreement_pct": 80.0,  # faster, but fails the gate
         "int8_dynamic_speedup": 3.4, "int8_dynamic_top1_agreement_pct": 93.0}  # passes, but no servable dtype
BATCHING = {"sequential_tok_s": 22.0, "dynamic_tok_s": 80.0, "dynamic_max_batch_size": 8,
            "continuous_tok_s": 78.0, "continuous_max_batch_size": 8}


# -- serving.dtype ---------------------------------------------------------------------------------

def _cfg(root: Path, model_dir: Path, **serving):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["path"] = str(model_dir)
    raw["hardware"] = {"device": "cpu", "threads": 1}
    raw["serving"] = {**raw["serving"], **serving}
    return config.parse(raw, root=root, stage="serve")


def test_server_loads_the_configured_precision_and_generates(tiny_model_dir, tmp_path, monkeypatch):
    from perfkit.serving import app

    monkeypatch.setattr(app.Embedder, "load", classmethod(lambda cls, *a, **k: None))  # the LM is what changes
    for dtype, expected in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        engine, _ = app.load_models(_cfg(tmp_path, tiny_model_dir, dtype=dtype))
        assert {p.dtype for p in engine.model.parameters()} == {expected}
        out = engine.generate_batch([[1, 2, 3, 4]], 3, stop_at_eos=False)
        assert len(out[0].token_ids) == 3


def test_an_unknown_serving_dtype_is_refused_naming_the_allowed_values(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="float32.*bfloat16.*float16"):
        _cfg(tmp_path, tiny_model_dir, dtype="int8")


# -- the choice rules ------------------------------------------------------------------------------

def test_precision_is_the_fastest_servable_scheme_that_passes_the_gate():
    choice = choose_precision(QUANT)
    assert choice.choice == "bfloat16" and choice.overrides == {"serving.dtype": "bfloat16"} and choice.applied
    assert "int8-dynamic (3.40x)" in choice.reason and "fp16" not in choice.reason.split(";")[1]


def test_precision_is_judged_at_the_width_the_server_batches():
    # This run's shape: bf16 no faster than fp32 at batch 1, 1.5x at batch 8 (AMX); a batching server runs at 8.
    quant = {"best_scheme": "fp32", "speedup": 1.0, "min_top1_agreement": 0.9,
             "fp32_speedup": 1.0, "fp32_top1_agreement_pct": 100.0, "fp32_speedup_batch8": 1.0,
             "bf16_speedup": 0.95, "bf16_top1_agreement_pct": 96.6, "bf16_speedup_batch8": 1.48}
    at_one, at_eight = choose_precision(quant), choose_precision(quant, 8)
    assert at_one.choice == "float32" and not at_one.applied
    assert at_eight.choice == "bfloat16" and at_eight.overrides == {"serving.dtype": "bfloat16"}
    assert "1.48x fp32 tokens/s offline at batch 8" in at_eight.reason
    # A width the quantization stage did not measure falls back to batch 1.
    assert choose_precision(quant, 4).choice == "float32"
    stack = {c.area: c for c in choose({"quantization": quant, "batching": BATCHING}, fallback_batch=4, min_kept_pct=89)}
    assert stack["precision"].choice == "bfloat16"  # dynamic-b8 was chosen, so precision is judged at 8


def test_precision_without_a_passing_servable_scheme_keeps_fp32():
    failing = {k: (50.0 if k.endswith("_pct") and not k.startswith("fp32") else v) for k, v in QUANT.items()}
    failing |= {"best_scheme": "fp32", "speedup": 1.0}
    choice = choose_precision(failing)
    assert choice.choice == "float32" and not choice.applied
    assert choose_precision(None).status == NOT_RUN


def test_batching_picks_the_best_served_tokens_per_second_with_its_batch_size():
    choice = choose_batching(BATCHING, fallback_batch=4)
    assert choice.overrides == {"serving.scheduler": "dynamic", "serving.max_batch_size": 8}
    assert choose_batching(BATCHING | {"continuous_tok_s": 90.0}, 4).overrides["serving.scheduler"] == "continuous"
    assert not choose_batching({"sequential_tok_s": 50.0, "dynamic_tok_s": 40.0}, 4).applied
    assert choose_batching({"dynamic_tok_s": 40.0}, 4).overrides["serving.max_batch_size"] == 4  # older summary: fallback


def test_choices_list_missing_stages_and_what_does_nothing_on_this_load(tmp_path):
    (tmp_path / "batching").mkdir()
    (tmp_path / "batching" / "metrics.json").write_text(json.dumps({"summary": BATCHING}))
    (tmp_path / "transport").mkdir()
    (tmp_path / "transport" / "metrics.json").write_text("{not json")
    summaries = read_summaries(tmp_path, ("batching", "quantization", "transport", "compression"))
    assert set(summaries) == {"batching"}
    choices = {c.area: c for c in choose(summaries | {"compression": {}}, fallback_batch=8, min_kept_pct=89)}
    assert choices["precision"].status == NOT_RUN and choices["transport"].status == NOT_RUN
    assert choices["compression"].status == NOT_ON_LOAD and not choices["compression"].applied
    assert stack_overrides(list(choices.values())) == {"serving.scheduler": "dynamic", "serving.max_batch_size": 8}


def test_transport_reason_quotes_the_gain_the_transport_stage_measured_per_kind():
    summary = {  # shaped like experiments/transport/metrics.json
        "c6_size_kb": 8192, "c6_reduction_pct_embeddings": 87.2, "c6_reduction_pct_embeddings_ci_low": 82.4,
        "c6_reduction_pct_embeddings_ci_high": 92.0, "c6_reduction_pct_document": 55.3,
    }
    choice = choose_transport(summary)
    assert choice.status == NOT_ON_LOAD and not choice.applied
    assert "8,192 KB" in choice.reason and "87% for embeddings" in choice.reason and "55% for document" in choice.reason
    assert "82" not in choice.reason  # interval bounds are not per-kind gains
    assert "gRPC" not in choose_transport({}).reason


def test_ablation_adds_in_order_and_leaves_each_out_once():
    applied = [c for c in choose({"batching": BATCHING, "quantization": QUANT}, fallback_batch=8, min_kept_pct=89) if c.applied]
    plan = ablation_plan(applied)
    assert [p[2] for p in plan if p[1] == "add"] == [(), ("batching",), ("batching", "precision")]
    assert {p[2] for p in plan if p[1] == "leave out"} == {("precision",), ("batching",)}
    assert [p[1] for p in ablation_plan(applied[:1])] == ["add", "add"]


# -- paired rounds ---------------------------------------------------------------------------------

def _run(name: str, r: int, latency_s: float, rss: float, cold: float, n: int = 20, users: int = 2) -> ServedRun:
    """A closed loop of `users` answering each request in `latency_s`, 10 output tokens each."""
    timings = [RequestTiming(index=i, t_send=1000.0 + (i // users) * latency_s, e2e_s=latency_s, status=200,
                             ttft_s=latency_s / 5, output_tokens=10, prompt_tokens=32, done=True) for i in range(n)]
    summary = summarize(timings, mode="closed", users=users)
    return ServedRun(name, r, LoadRun(tuple(timings), summary, 1.0, Path("x")), ResourceUsage(peak_rss_mb=rss), cold, 0.2, 1.0)


def _result(opt_latencies, base_latency=2.0, checks=()):
    rounds = {"baseline": [_run("baseline", r, base_latency, 1000.0, 4.0) for r in range(len(opt_latencies))],
              "optimized": [_run("optimized", r, lat, 900.0, 4.2) for r, lat in enumerate(opt_latencies)]}
    steps = (AblationStep("baseline", "add", (), rounds["baseline"][0]),
             AblationStep("+ batching", "add", ("batching",), _run("x", 0, 0.8, 1100.0, 4.0)),
             AblationStep("full − batching", "leave out", ("precision",), _run("y", 0, 1.2, 900.0, 4.0)),
             AblationStep("+ precision", "add", ("batching", "precision"), rounds["optimized"][0]))
    return OptimizedResult((), ("cache",), rounds, steps, CostConfig(usd_per_hour=0.1, target_qps=5.0), 20, (1.0, 1.0),
                           checks=tuple(checks))


def test_relative_figures_come_from_paired_rounds_with_intervals():
    s = _result([0.5, 0.52, 0.48]).summary()
    assert s["latency_reduction_pct_ci_low"] < s["latency_reduction_pct"] < s["latency_reduction_pct_ci_high"]
    assert s["latency_reduction_pct"] == pytest.approx(75.0, abs=1.5)
    assert s["throughput_gain_pct"] == pytest.approx(300.0, rel=0.05)
    assert s["peak_memory_reduction_pct"] == pytest.approx(10.0)
    assert s["cold_start_reduction_pct"] == pytest.approx(-5.0)
    # 1 req/s vs ~4 req/s: 5 and 2 instances for 5 QPS
    assert (s["baseline_instances_at_target"], s["optimized_instances_at_target"]) == (5, 2)
    assert s["monthly_cost_reduction_pct"] == pytest.approx(60.0)
    assert s["qps_per_usd_gain"] == pytest.approx(s["throughput_gain_pct"] / 100 + 1)
    assert s["best_single"] == "+ batching" and s["tok_s_vs_best_single"] == pytest.approx(0.8 / 0.5, rel=0.05)
    assert s["missing_stages"] == "cache"
    checked = replace(_result([0.5, 0.5, 0.5]), baseline_stage_tok_s=10.0)
    assert checked.summary()["baseline_stage_tok_s"] == 10.0  # 2 users x 10 tok / 2 s


def test_cold_start_is_split_into_model_load_warm_up_and_first_answer():
    s = _result([0.5, 0.5, 0.5]).summary()
    assert (s["baseline_model_load_s"], s["baseline_ready_s"], s["optimized_ready_s"]) == pytest.approx((0.2, 1.0, 1.0))
    text = cold_start_text(s)
    assert "0.80 → 0.80" in text and "3.00 → 3.20" in text  # ready minus load; cold start minus ready
    assert cold_start_text({k: v for k, v in s.items() if k != "optimized_ready_s"}) == ""


def test_claims_are_judged_on_the_interval():
    checks = [c for c in checks_for(REPO / "data" / "claims.yaml", "optimized") if c.metric == "latency_reduction_pct"]
    assert checks
    steady = {r.key: r.status for r in _result([0.5, 0.5, 0.5], checks=checks).claims()}
    assert set(steady.values()) == {HOLDS}
    far = {r.key: r.status for r in _result([1.8, 1.8, 1.8], checks=checks).claims()}
    assert set(far.values()) == {FAILS}
    noisy = {r.key: r.status for r in _result([0.2, 0.9, 1.6], checks=checks).claims()}
    assert set(noisy.values()) == {INCONCLUSIVE}


def test_tables_conclusion_and_variant_metrics_line_up():
    result = _result([0.5, 0.52, 0.48])
    tables = result.tables()
    assert list(tables["ablation"]["kind"]) == ["add", "add", "leave out", "add"]
    assert tables["ablation"]["latency_ms_p99"].isna().all()  # 20 requests a step: no p99, its max instead
    assert (tables["ablation"]["latency_ms_max"] > 0).all()
    comparison = tables["comparison"].set_index("measure")
    assert comparison.loc["mean latency (ms)", "article before"] == 2800.0
    assert comparison.loc["mean latency (ms)", "change (%)"] == pytest.approx(-75.0, abs=1.5)
    metrics = result.variant_metrics()
    assert set(metrics["baseline"]) == set(metrics["optimized"])  # MLflow compare lines them up
    text = result.conclusion()
    assert "one round per step" in text and "cache" in text
    assert "0.50 s over 3 rounds" in result.verdict()
    assert sorted(result.figures()) == ["ablation", "before_after"]
    assert "load_flags" not in result.summary()
    cut = result.rounds["baseline"][1]
    flagged = replace(cut, load=replace(cut.load, summary=replace(cut.load.summary, flags=("time limit 300 s reached",))))
    result.rounds["baseline"][1] = flagged
    assert result.summary()["load_flags"] == "baseline round 2: time limit 300 s reached"
    assert "time limit 300 s reached" in result.conclusion()


# -- end to end ------------------------------------------------------------------------------------

def test_smoke_serves_the_chosen_stack_against_the_baseline(perfkit_root):
    from perfkit.stage import run_stage

    (perfkit_root / "data" / "claims.yaml").symlink_to(REPO / "data" / "claims.yaml")
    params = yaml.safe_load((perfkit_root / "params.yaml").read_text())
    params["smoke"] |= {"workload": {"num_prompts": 4, "prompt_tokens": 24, "max_new_tokens": 4}}
    (perfkit_root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage, summary in (("batching", BATCHING | {"dynamic_max_batch_size": 2}), ("quantization", QUANT)):
        (smoke_experiments(perfkit_root) / stage).mkdir(parents=True)
        (smoke_experiments(perfkit_root) / stage / "metrics.json").write_text(json.dumps({"summary": summary}))
    summary = json.loads(run_stage("optimized", smoke=True, root=perfkit_root).read_text())["summary"]
    assert summary["stack"] == "dynamic-b2, bfloat16"
    assert "baseline" in summary["missing_stages"] and "cache" in summary["missing_stages"]
    assert summary["rounds"] == 2 and summary["baseline_error_rate"] == 0 and summary["optimized_error_rate"] == 0
    for key in ("throughput_tok_s_gain", "latency_reduction_pct", "cold_start_reduction_pct", "monthly_cost_reduction_pct"):
        assert f"{key}_ci_low" in summary and f"{key}_ci_high" in summary
    assert "C10:mean latency reduction" in summary["claims"]
    out = smoke_experiments(perfkit_root) / "optimized"
    ablation = (out / "ablation.csv").read_text()
    assert "full − batching" in ablation and "+ precision" in ablation
    assert (out / "optimized.html").is_file()
    assert summary["case_study_chapters"] == 1 and summary["docs_per_min_gain"] > 0
    assert 0 <= summary["case_study_rouge_l_mean"] <= 1 and "C20:documents per minute gain" in summary["claims"]


def test_case_study_cuts_whole_chapters_and_scores_similarity(tiny):
    from perfkit import casestudy

    _, tokenizer, _ = tiny
    found = casestudy.chapters(REPO / "data" / "corpus", tokenizer, 2)
    assert len(found) == 2 and found[0].number < found[1].number
    assert all(1500 < c.tokens < 4000 for c in found)  # the shortest of Persuasion's chapters
    pieces = casestudy.chunks(found[0].text, tokenizer, 512)
    assert len(pieces) == -(-found[0].tokens // 512)
    assert casestudy.rouge_l(["the cat sat", "a b c"], ["the cat sat", "x y z"]) == [1.0, 0.0]
    summaries = [casestudy.Summary(1, 3, 30.0, "", 10), casestudy.Summary(2, 3, 30.0, "", 10)]
    assert casestudy.docs_per_min(summaries) == 2.0


def test_case_study_reports_where_the_greedy_paths_part():
    from perfkit.casestudy import Chapter, Summary
    from perfkit.stages.optimized.case_study import CaseStudy

    chapters = (Chapter(1, "text", 100), Chapter(2, "text", 120))
    base = (Summary(1, 2, 10.0, "final one", 20, ("a b", "c d")), Summary(2, 1, 10.0, "final two", 10, ("e f",)))
    opt = (Summary(1, 2, 5.0, "final one", 20, ("a b", "c x")), Summary(2, 1, 5.0, "other", 10, ("g h",)))
    study = CaseStudy(chapters, base, opt, (1.0, 0.0), 0.5, (0.75, 0.0))
    assert CaseStudy.compare(chapters, base, opt, 0.5) == study  # ROUGE-L per chapter: finals, and chunk means
    s = study.summary()
    assert (s["case_study_identical_chunks"], s["case_study_chunks"]) == (1, 3)
    assert s["case_study_chunk_rouge_l_mean"] == 0.375 and s["case_study_similarity_gate_passed"] is True
    assert "1 of 3 word for word" in study.text()
    assert "word for word" not in CaseStudy(chapters, base, opt, (1.0, 0.0), 0.5).text()


def test_a_pinned_stack_replaces_the_measured_batching_and_precision_choices():
    cfg = config.override(config.load("optimized", root=REPO),
                          {"optimized.pinned": {"scheduler": "continuous", "max_batch_size": 32, "dtype": "float16"}})
    choices = choose({"quantization": QUANT, "batching": BATCHING}, fallback_batch=8, min_kept_pct=89,
                     pinned=cfg.optimized.pinned)
    by_area = {c.area: c for c in choices}
    assert by_area["batching"].overrides == {"serving.scheduler": "continuous", "serving.max_batch_size": 32}
    assert (by_area["precision"].choice, by_area["precision"].overrides) == ("float16", {"serving.dtype": "float16"})
    assert by_area["batching"].source == "params" and "pinned" in by_area["precision"].reason
    measured = {c.area: c for c in choose({"quantization": QUANT, "batching": BATCHING}, fallback_batch=8, min_kept_pct=89)}
    assert measured["precision"].choice == "bfloat16"  # unpinned: the gate's choice, as before


def test_a_pinned_stack_with_an_unknown_scheduler_is_refused():
    with pytest.raises(ConfigError, match="optimized.pinned.scheduler"):
        config.override(config.load("optimized", root=REPO), {"optimized.pinned": {"scheduler": "fifo"}})


def test_a_pinned_baseline_setting_is_not_applied_as_an_optimization():
    cfg = config.override(config.load("optimized", root=REPO),
                          {"optimized.pinned": {"scheduler": "sequential", "dtype": "float32"}})
    choices = {c.area: c for c in choose({}, fallback_batch=8, min_kept_pct=89, pinned=cfg.optimized.pinned)}
    assert not choices["batching"].applied and not choices["precision"].applied
    assert stack_overrides(list(choices.values())) == {}
