"""The optimized stage: the server's precision setting, the choice rules, the paired-round figures, and a smoke run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, judged, smoke_experiments

from perfkit import config
from perfkit.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED
from perfkit.config import ConfigError, CostConfig
from perfkit.hardware import ResourceUsage
from perfkit.load.results import RequestTiming, summarize
from perfkit.load.runner import LoadRun
from perfkit.load.served import ServedRun
from perfkit.serving.launch import ColdStart
from perfkit.stages.optimized.ablation import AblationStep, ablation_plan
from perfkit.stages.optimized.case_study import StackRound
from perfkit.stages.optimized.choose import (
    NOT_ON_LOAD,
    NOT_RUN,
    Choice,
    choose,
    choose_batching,
    choose_precision,
    choose_transport,
    stack_overrides,
)
from perfkit.stages.optimized.cold_starts import BASELINE_START, NO_WARMUP, OPTIMIZED_START, WITHOUT_LEVER, ColdStarts
from perfkit.stages.optimized.result import OptimizedResult
from perfkit.upstream import Precision, Schedulers, SchemeSpeed, Upstream

QUANT = Precision(
    gate=0.9,
    widest=1,
    schemes={
        "fp32": SchemeSpeed(1.0, 1.0),
        "bf16": SchemeSpeed(1.6, 0.95),
        "fp16": SchemeSpeed(1.7, 0.80),  # faster, but fails the gate
        "int8-dynamic": SchemeSpeed(3.4, 0.93),  # passes, but no servable dtype
    },
)
BATCHING = Schedulers({"sequential": (22.0, 1), "dynamic": (80.0, 8), "continuous": (78.0, 8)})
MEASURED = Upstream(quantization=QUANT, batching=BATCHING)


# -- serving.dtype ---------------------------------------------------------------------------------


def _cfg(root: Path, model_dir: Path, **serving):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["path"] = str(model_dir)
    raw["hardware"] = {"device": "cpu", "threads": 1}
    raw["serving"] = {**raw["serving"], **serving}
    return config.parse(raw, root=root, stage="serve")


def test_server_loads_the_configured_precision_and_generates(tiny_model_dir, tmp_path, monkeypatch):
    from perfkit.serving import state as app

    monkeypatch.setattr(app.Embedder, "load", classmethod(lambda cls, *a, **k: None))  # the LM is what changes
    for dtype, expected in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        engine, _ = app.load_models(_cfg(tmp_path, tiny_model_dir, dtype=dtype))
        assert {p.dtype for p in engine.model.parameters()} == {expected}
        out = engine.generate_batch([[1, 2, 3, 4]], 3, stop_at_eos=False)
        assert len(out[0].token_ids) == 3


def test_a_prepared_checkpoint_is_saved_once_in_the_served_precision_and_loaded_as_it_is(tiny_model_dir, tmp_path, monkeypatch):
    from perfkit.serving import state as app
    from perfkit.serving.checkpoint import prepare_checkpoint, served_checkpoint

    monkeypatch.setattr(app.Embedder, "load", classmethod(lambda cls, *a, **k: None))
    assert served_checkpoint(_cfg(tmp_path, tiny_model_dir, dtype="bfloat16")) == tiny_model_dir  # off: the model as saved
    assert served_checkpoint(_cfg(tmp_path, tiny_model_dir, prepared_checkpoint=True)) == tiny_model_dir  # fp32: nothing to do
    cfg = _cfg(tmp_path, tiny_model_dir, dtype="bfloat16", prepared_checkpoint=True)
    copy = prepare_checkpoint(cfg)
    assert copy == served_checkpoint(cfg) != tiny_model_dir and copy.is_relative_to(tmp_path / ".cache")
    from safetensors import safe_open

    with safe_open(copy / "model.safetensors", "pt") as f:  # saved in bf16: nothing to cast at load
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    stamp = (copy / "model.safetensors").stat().st_mtime_ns
    assert prepare_checkpoint(cfg) == copy and (copy / "model.safetensors").stat().st_mtime_ns == stamp  # up to date: kept
    engine, _ = app.load_models(cfg)
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    (tiny_model_dir / "model.safetensors").touch()  # the source changed: the copy is made again
    prepare_checkpoint(cfg)
    assert (copy / "model.safetensors").stat().st_mtime_ns != stamp


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
    quant = Precision(gate=0.9, widest=8, schemes={"fp32": SchemeSpeed(1.0, 1.0, 1.0), "bf16": SchemeSpeed(0.95, 0.966, 1.48)})
    at_one, at_eight = choose_precision(quant), choose_precision(quant, 8)
    assert at_one.choice == "float32" and not at_one.applied
    assert at_eight.choice == "bfloat16" and at_eight.overrides == {"serving.dtype": "bfloat16"}
    assert "1.48x fp32 tokens/s offline at batch 8" in at_eight.reason
    # A width the quantization stage did not measure falls back to batch 1.
    assert choose_precision(quant, 4).choice == "float32"
    stack = {c.area: c for c in choose(Upstream(quantization=quant, batching=BATCHING), min_kept_pct=89)}
    assert stack["precision"].choice == "bfloat16"  # dynamic-b8 was chosen, so precision is judged at 8


def test_precision_without_a_passing_servable_scheme_keeps_fp32():
    failing = replace(QUANT, schemes={k: v if k == "fp32" else replace(v, top1_agreement=0.5) for k, v in QUANT.schemes.items()})
    choice = choose_precision(failing)
    assert choice.choice == "float32" and not choice.applied
    assert choose_precision(None).status == NOT_RUN


def test_batching_picks_the_best_served_tokens_per_second_with_its_batch_size():
    choice = choose_batching(BATCHING)
    assert choice.overrides == {"serving.scheduler": "dynamic", "serving.max_batch_size": 8}
    faster = Schedulers(BATCHING.served_tok_s | {"continuous": (90.0, 4)})
    assert choose_batching(faster).overrides == {"serving.scheduler": "continuous", "serving.max_batch_size": 4}
    assert not choose_batching(Schedulers({"sequential": (50.0, 1), "dynamic": (40.0, 8)})).applied
    assert choose_batching(Schedulers()).status == "not chosen" and choose_batching(None).status == NOT_RUN


def test_continuous_is_chosen_where_its_tokens_per_second_cannot_be_told_from_the_best():
    served = {"sequential": (20.0, 1), "dynamic": (64.0, 8), "continuous": (61.0, 8)}
    # Per round over sequential: continuous/dynamic is 0.78, 1.15, 0.92 -> an interval across 1.
    close = Schedulers(served, {"dynamic": (3.2, 2.6, 3.8), "continuous": (2.5, 3.0, 3.5)})
    choice = choose_batching(close)
    assert choice.overrides == {"serving.scheduler": "continuous", "serving.max_batch_size": 8}
    assert "cannot be told from dynamic's" in choice.reason and "over 3 rounds" in choice.reason
    # Continuous slower in every round by about the same share: the interval excludes 1, dynamic stays.
    apart = Schedulers(served, {"dynamic": (3.2, 2.6, 3.8), "continuous": (2.9, 2.36, 3.45)})
    assert choose_batching(apart).overrides["serving.scheduler"] == "dynamic"
    # Without rounds to compare, the higher mean is chosen.
    assert choose_batching(Schedulers(served)).overrides["serving.scheduler"] == "dynamic"


def test_choices_list_missing_stages_and_what_does_nothing_on_this_load(tmp_path):
    from perfkit import upstream

    (tmp_path / "transport").mkdir()
    (tmp_path / "transport" / "result.json").write_text("{not json")  # unreadable: as if not run
    read = upstream.read(tmp_path, ("batching", "quantization", "transport", "compression"))
    assert read == Upstream(missing=("batching", "quantization", "transport", "compression"))
    measured = Upstream(batching=BATCHING, compression=True, missing=("quantization", "transport", "cache"))
    choices = {c.area: c for c in choose(measured, min_kept_pct=89)}
    assert choices["precision"].status == NOT_RUN and choices["transport"].status == NOT_RUN
    assert choices["cache"].status == NOT_RUN
    assert choices["compression"].status == NOT_ON_LOAD and not choices["compression"].applied
    assert stack_overrides(list(choices.values())) == {"serving.scheduler": "dynamic", "serving.max_batch_size": 8}


def test_transport_reason_quotes_the_gain_the_transport_stage_measured_per_kind():
    choice = choose_transport(({"embeddings": 87.2, "document": 55.3}, 8192))
    assert choice.status == NOT_ON_LOAD and not choice.applied
    assert "8,192 KB" in choice.reason and "87% for embeddings" in choice.reason and "55% for document" in choice.reason
    assert "gRPC" not in choose_transport(({}, None)).reason


def test_ablation_adds_in_order_and_leaves_each_out_once():
    applied = [c for c in choose(MEASURED, min_kept_pct=89) if c.applied]
    plan = ablation_plan(applied)
    assert [p[2] for p in plan if p[1] == "add"] == [(), ("batching",), ("batching", "precision")]
    assert {p[2] for p in plan if p[1] == "leave out"} == {("precision",), ("batching",)}
    assert [p[1] for p in ablation_plan(applied[:1])] == ["add", "add"]


# -- paired rounds ---------------------------------------------------------------------------------


def _run(name: str, r: int, latency_s: float, rss: float, cold: float, n: int = 20, users: int = 2) -> ServedRun:
    """A closed loop of `users` answering each request in `latency_s`, 10 output tokens each."""
    timings = [
        RequestTiming(
            index=i,
            t_send=1000.0 + (i // users) * latency_s,
            e2e_s=latency_s,
            status=200,
            ttft_s=latency_s / 5,
            output_tokens=10,
            prompt_tokens=32,
            done=True,
        )
        for i in range(n)
    ]
    summary = summarize(timings, mode="closed", users=users)
    return ServedRun(name, r, LoadRun(tuple(timings), summary, 1.0, Path("x")), ResourceUsage(peak_rss_mb=rss), cold, 0.2, 1.0)


def _result(opt_latencies, base_latency=2.0):
    """Baseline and optimized over the rounds, and the two single-optimization arms of the ablation (0.8 s and 1.2 s)."""
    n = len(opt_latencies)
    rounds = {
        "baseline": [_run("baseline", r, base_latency, 1000.0, 4.0) for r in range(n)],
        "optimized": [_run("optimized", r, lat, 900.0, 4.2) for r, lat in enumerate(opt_latencies)],
        "batching only": [_run("batching only", r, 0.8, 1100.0, 4.0) for r in range(n)],
        "precision only": [_run("precision only", r, 1.2, 900.0, 4.0) for r in range(n)],
    }
    steps = (
        AblationStep("baseline", "add", (), "baseline"),
        AblationStep("+ batching", "add", ("batching",), "batching only"),
        AblationStep("full − batching", "leave out", ("precision",), "precision only"),
        AblationStep("+ precision", "add", ("batching", "precision"), "optimized"),
    )
    return OptimizedResult((), ("cache",), rounds, steps, CostConfig(usd_per_hour=0.1, target_qps=5.0), 20, (1.0, 1.0))


def test_relative_figures_come_from_paired_rounds_with_intervals():
    s = _result([0.5, 0.52, 0.48]).summary()
    assert s["latency_reduction_pct_ci_low"] < s["latency_reduction_pct"] < s["latency_reduction_pct_ci_high"]
    assert s["latency_reduction_pct"] == pytest.approx(75.0, abs=1.5)
    assert s["throughput_gain_pct"] == pytest.approx(300.0, rel=0.05)
    assert s["peak_memory_reduction_pct"] == pytest.approx(10.0)
    assert "cold_start_reduction_pct" not in s  # the cold-start block's figure, not the arms' one start a round
    # 1 req/s vs ~4 req/s: 5 and 2 instances for 5 QPS
    assert (s["baseline_instances_at_target"], s["optimized_instances_at_target"]) == (5, 2)
    assert s["monthly_cost_reduction_pct"] == pytest.approx(60.0)
    assert s["qps_per_usd_gain"] == pytest.approx(s["throughput_gain_pct"] / 100 + 1)
    assert s["best_single"] == "batching only" and s["tok_s_vs_best_single"] == pytest.approx(0.8 / 0.5, rel=0.05)
    assert s["tok_s_vs_best_single_ci_low"] <= s["tok_s_vs_best_single"] <= s["tok_s_vs_best_single_ci_high"]
    # 2 x 2: the full gain (2 / 0.5 = 4x) over the product of the single gains (2.5x and 1.67x)
    steady = _result([0.5, 0.5, 0.5]).summary()
    assert steady["ablation_interaction"] == pytest.approx(4 / (2.5 * 2.0 / 1.2))
    assert s["missing_stages"] == "cache"
    checked = replace(_result([0.5, 0.5, 0.5]), baseline_stage_tok_s=10.0)
    assert checked.summary()["baseline_stage_tok_s"] == 10.0  # 2 users x 10 tok / 2 s


def _starts(optimized_s: tuple[float, ...], n: int = 5, first_answer_no_warmup: float = 0.4) -> ColdStarts:
    """Baseline starts of 4 s (imports 3, load 0.5, warm-up 0.3, first answer 0.1); the optimized stack's cold starts
    `optimized_s` with a 0.25 s load (4 s and a 1 s load without its lever); without warm-up the baseline is ready
    0.3 s sooner and answers first in 0.4 s."""

    def start(cold: float, load: float = 0.5, warmup: float = 0.3, first: float = 0.1) -> ColdStart:
        return ColdStart(3.0, load, warmup, cold - first, cold)

    return ColdStarts(
        {
            BASELINE_START: tuple(start(4.0) for _ in range(n)),
            NO_WARMUP: tuple(start(3.7 - 0.1 + first_answer_no_warmup, warmup=0.0, first=first_answer_no_warmup) for _ in range(n)),
            OPTIMIZED_START: tuple(start(optimized_s[r % len(optimized_s)], load=0.25) for r in range(n)),
            WITHOUT_LEVER: tuple(start(4.0, load=1.0) for _ in range(n)),  # the bf16 stack cast from fp32 at load
        },
        ("serving.prepared_checkpoint",),
    )


def test_cold_starts_are_split_into_parts_and_paired_by_round():
    s = _starts((3.6, 3.8, 3.6, 3.8, 3.7)).summary()
    assert s["cold_start_samples"] == 5 and s["cold_start_samples_enough"] is True
    assert s["baseline_imports_s"] == 3.0 and s["baseline_model_load_s"] == 0.5 and s["baseline_warmup_s"] == 0.3
    assert s["baseline_other_s"] == pytest.approx(0.1) and s["baseline_first_answer_s"] == pytest.approx(0.1)
    assert s["baseline_imports_share_pct"] == pytest.approx(75.0)
    assert s["cold_start_reduction_pct"] == pytest.approx(7.5)  # 4.0 -> 3.7 s on average, paired by round
    assert s["cold_start_reduction_pct_ci_low"] < 7.5 < s["cold_start_reduction_pct_ci_high"]
    assert s["model_load_reduction_pct"] == pytest.approx(50.0)
    assert s["first_response_saving_pct"] == pytest.approx(75.0)  # 0.4 s -> 0.1 s for the first client
    assert s["lever_model_load_reduction_pct"] == pytest.approx(75.0)  # 1.0 s cast at load -> 0.25 s from the bf16 copy
    assert s["lever_cold_start_reduction_pct"] == pytest.approx(7.5)
    few = _starts((3.7,), n=1).summary()
    assert few["cold_start_samples"] == 1 and few["cold_start_samples_enough"] is False
    text = _starts((3.7,)).text()
    assert "started 5 times" in text and "serving.prepared_checkpoint" in text and "(75%)" in text
    assert "without its lever" in text and "+75%" in text


def test_the_cold_start_claims_need_a_lever_and_five_starts_a_variant():
    c13, c19 = "C13:cold-start reduction", "C19:first-response saving from warm-up"
    with_lever = replace(
        _result([0.5, 0.5, 0.5]),
        cold_starts=_starts((3.7,)),
        choices=(Choice("cold start", "bfloat16 checkpoint", "a fixture", "baseline", {"serving.prepared_checkpoint": True}),),
    )
    s = with_lever.summary()
    assert s["stack_cold_start_levers"] == "serving.prepared_checkpoint" and s["cold_start_claim_tested"] is True
    claims = judged("optimized", s)
    assert claims[c13].status == FAILS and claims[c13].measured == pytest.approx(7.5)  # tested: 7.5% against 60%
    assert claims[c19].status == HOLDS  # 75% saved on the first answer, every round
    one_start = judged("optimized", replace(with_lever, cold_starts=_starts((3.7,), n=1)).summary())
    assert one_start[c13].status == NOT_TESTED and "1 start(s) per variant" in one_start[c13].why
    assert one_start[c19].status == NOT_TESTED and "at least 5 per variant" in one_start[c19].why.lower()


def test_claims_are_judged_on_the_interval():
    c10 = "C10:mean latency reduction"
    assert judged("optimized", _result([0.5, 0.5, 0.5]).summary())[c10].status == HOLDS  # 75% every round
    assert judged("optimized", _result([1.8, 1.8, 1.8]).summary())[c10].status == FAILS  # 10% every round
    assert judged("optimized", _result([0.2, 0.9, 1.6]).summary())[c10].status == INCONCLUSIVE  # 90%, 55%, 20%


def test_a_stack_with_no_cold_start_lever_does_not_test_the_cold_start_claim():
    result = replace(_result([0.5, 0.5, 0.5]), cold_starts=_starts((3.7,)))  # 5 starts each, but no lever applied
    s = result.summary()
    assert s["stack_has_cold_start_lever"] is False and s["stack_cold_start_levers"] == "none"
    assert s["cold_start_samples_enough"] is True and s["cold_start_claim_tested"] is False
    c13 = judged("optimized", s)["C13:cold-start reduction"]
    assert c13.status == NOT_TESTED and c13.measured == pytest.approx(7.5)  # shown, not judged
    assert "act on a cold start: none" in c13.why and "measured 7.5%" in c13.why


def test_tables_conclusion_and_variant_metrics_line_up():
    result = _result([0.5, 0.52, 0.48])
    tables = result.tables()
    assert list(tables["ablation"]["kind"]) == ["add", "add", "leave out", "add"]
    ablation = tables["ablation"].set_index("name")
    assert list(ablation["arm"]) == ["baseline", "batching only", "precision only", "optimized"]
    assert ablation.loc["+ batching", "tok_s_vs_baseline"] == pytest.approx(2.5)  # 2 s -> 0.8 s in every round
    assert ablation.loc["baseline", "tok_s_vs_baseline"] == pytest.approx(1.0)
    assert (ablation["throughput_tok_s_ci_low"] <= ablation["throughput_tok_s"]).all()
    assert ablation.loc["+ batching", "latency_ms_mean"] == pytest.approx(800.0)
    comparison = tables["comparison"].set_index("measure")
    assert comparison.loc["mean latency (ms)", "article before"] == 2800.0
    assert comparison.loc["mean latency (ms)", "change (%)"] == pytest.approx(-75.0, abs=1.5)
    metrics = result.variant_metrics()
    assert set(metrics["baseline"]) == set(metrics["optimized"])  # MLflow compare lines them up
    text = result.conclusion()
    assert "3 interleaved rounds" in text and "cache" in text and "Interaction" in text
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

    params = yaml.safe_load((perfkit_root / "params.yaml").read_text())
    params["smoke"] |= {"workload": {"num_prompts": 4, "prompt_tokens": 24, "max_new_tokens": 4}}
    # No upstream stage ran in this root (test_upstream reads saved results): the stack is pinned.
    params["smoke"]["optimized"]["pinned"] = {"scheduler": "dynamic", "max_batch_size": 2, "dtype": "bfloat16"}
    (perfkit_root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    summary = json.loads(run_stage("optimized", smoke=True, root=perfkit_root).read_text())["summary"]
    assert summary["stack"] == "dynamic-b2, bfloat16, bfloat16 checkpoint"
    assert "baseline" in summary["missing_stages"] and "cache" in summary["missing_stages"]
    assert summary["rounds"] == 2 and summary["baseline_error_rate"] == 0 and summary["optimized_error_rate"] == 0
    for key in ("throughput_tok_s_gain", "latency_reduction_pct", "monthly_cost_reduction_pct"):
        assert f"{key}_ci_low" in summary and f"{key}_ci_high" in summary
    # The cold-start block: one start a variant in the smoke (the stack's lever: its bf16 copy), split into parts
    assert summary["stack_cold_start_levers"] == "serving.prepared_checkpoint" and summary["cold_start_samples"] == 1
    assert 0 < summary["baseline_imports_s"] < summary["baseline_cold_start_s"]
    assert summary["baseline_without_warm_up_warmup_s"] == 0 < summary["baseline_warmup_s"]
    assert (out := smoke_experiments(perfkit_root) / "optimized" / "cold_starts.csv").is_file()
    assert len(out.read_text().splitlines()) == 1 + 4  # baseline, without warm-up, optimized, optimized without its lever
    assert "lever_model_load_reduction_pct" in summary
    claims = judged("optimized", summary)
    c10 = claims["C10:mean latency reduction"]
    assert c10.measured == summary["latency_reduction_pct"] and c10.low == summary["latency_reduction_pct_ci_low"]
    out = smoke_experiments(perfkit_root) / "optimized"
    ablation = (out / "ablation.csv").read_text()
    assert "full − batching" in ablation and "+ precision" in ablation
    assert (out / "optimized.html").is_file()
    assert summary["docs_per_min_gain"] > 0 and 0 <= summary["case_study_rouge_l_mean"] <= 1
    c20 = claims["C20:documents per minute gain"]
    assert c20.measured == summary["docs_per_min_gain"]
    # The smoke sends 2 documents at once (params' smoke case_study): one document's latency, not a service's rate.
    assert summary["case_study_concurrent_documents"] == 2 and summary["case_study_is_service"] is False
    assert c20.status == NOT_TESTED and "2 document" in c20.why and "at least 8 documents" in c20.why


def test_case_study_cuts_whole_chapters_and_scores_similarity(tiny):
    from perfkit import casestudy

    _, tokenizer, _ = tiny
    found = casestudy.chapters(REPO / "data" / "corpus", tokenizer, 2)
    assert len(found) == 2 and found[0].number < found[1].number
    assert all(1500 < c.tokens < 4000 for c in found)  # the shortest of Persuasion's chapters
    pieces = casestudy.chunks(found[0].text, tokenizer, 512)
    assert len(pieces) == -(-found[0].tokens // 512)
    assert casestudy.rouge_l(["the cat sat", "a b c"], ["the cat sat", "x y z"]) == [1.0, 0.0]
    cut = casestudy.chapters(REPO / "data" / "corpus", tokenizer, 2, max_tokens=128)
    assert [c.tokens for c in cut] == [128, 128]  # a document: the first tokens of a chapter
    summaries = (casestudy.Summary(1, 3, 30.0, "", 10), casestudy.Summary(2, 3, 30.0, "", 10))
    assert StackRound(summaries, 60.0).docs_per_min == 2.0  # two documents at once in one minute


def test_case_study_reports_where_the_greedy_paths_part():
    from perfkit.casestudy import Chapter, Summary
    from perfkit.stages.optimized.case_study import CaseStudy

    chapters = (Chapter(1, "text", 100), Chapter(2, "text", 120))
    base = (Summary(1, 2, 10.0, "final one", 20, ("a b", "c d")), Summary(2, 1, 10.0, "final two", 10, ("e f",)))
    opt = (Summary(1, 2, 5.0, "final one", 20, ("a b", "c x")), Summary(2, 1, 5.0, "other", 10, ("g h",)))
    # Two rounds: the baseline 2 documents a minute in each, the optimized stack 4 then 3.
    study = CaseStudy(
        chapters,
        {"baseline": (StackRound(base, 60.0), StackRound(base, 60.0)), "optimized": (StackRound(opt, 30.0), StackRound(opt, 40.0))},
        0.5,
    )
    sim = study.similarity("optimized")  # ROUGE-L per document: finals, and chunk means
    assert sim.final == pytest.approx((1.0, 0.0)) and sim.chunks == pytest.approx((0.75, 0.0))
    s = study.summary()
    assert (s["case_study_identical_chunks"], s["case_study_chunks"]) == (1, 3)
    assert s["case_study_chunk_rouge_l_mean"] == 0.375 and s["case_study_similarity_gate_passed"] is True
    assert s["docs_per_min_gain"] == pytest.approx(1.75)  # paired by round: 2x, then 1.5x
    assert s["docs_per_min_gain_ci_low"] < 1.75 < s["docs_per_min_gain_ci_high"]
    assert s["case_study_rounds"] == 2 and s["case_study_concurrent_documents"] == 2 and s["case_study_is_service"] is False
    assert "1 of 3 word for word" in study.text()


def test_the_baseline_summarizes_the_next_document_each_round_and_similarity_pools_its_rounds():
    from types import SimpleNamespace

    from perfkit.casestudy import Chapter, Summary
    from perfkit.stages.optimized.case_study import CaseStudy, CaseStudyRun

    chapters = tuple(Chapter(i, "text", 100) for i in range(1, 4))
    cfg = SimpleNamespace(optimized=SimpleNamespace(case_study=SimpleNamespace(baseline_documents=2)))
    run = CaseStudyRun(cfg, chapters, None, {})
    picked = []
    for _ in range(3):  # 2 a round, the next ones each round, wrapping around the 3 chapters
        picked.append([c.number for c in run.documents("baseline")])
        run.rounds.setdefault("baseline", []).append(StackRound((), 1.0))
    assert picked == [[1, 2], [3, 1], [2, 3]] and run.documents("optimized") == chapters
    # One document a round: the optimized stack's first round is compared with each round's document.
    base = tuple(StackRound((Summary(i, 1, 9.0, f"summary {i}", 5),), 30.0) for i in (1, 2, 3))
    opt = (Summary(1, 1, 3.0, "summary 1", 5), Summary(2, 1, 3.0, "summary 2", 5), Summary(3, 1, 3.0, "other words", 5))
    study = CaseStudy(chapters, {"baseline": base, "optimized": tuple(StackRound(opt, 10.0) for _ in base)}, 0.5)
    assert study.similarity("optimized").final == pytest.approx((1.0, 1.0, 0.0))
    s = study.summary()
    assert s["case_study_baseline_documents"] == 1 and s["case_study_baseline_chapters"] == 3
    assert "the next each round: 3 over the rounds" in study.text()


def test_c20_is_tested_only_by_a_service_load_and_gated_on_similarity():
    from perfkit.casestudy import Chapter, Summary
    from perfkit.stages.optimized.case_study import CaseStudy

    chapters = tuple(Chapter(i, "text", 100) for i in range(1, 9))
    same = tuple(Summary(i, 1, 1.0, "the same summary", 5, ("a b",)) for i in range(1, 9))
    other = tuple(Summary(i, 1, 1.0, "nothing alike here", 5, ("x y",)) for i in range(1, 9))

    def summary(optimized: tuple, walls: tuple[float, ...], documents: int = 8) -> dict:
        rounds = {
            "baseline": tuple(StackRound(same[:2], 60.0) for _ in walls),  # 2 a minute
            "optimized": tuple(StackRound(optimized[:documents], w) for w in walls),
        }
        return CaseStudy(chapters, rounds, 0.5).summary()

    gain = "C20:documents per minute gain"
    fast = summary(same, (5.0, 5.0, 5.0))  # 8 documents in 5 s: 96 a minute, 48x the baseline in every round
    assert fast["case_study_is_service"] is True and fast["docs_per_min_gain"] == pytest.approx(48.0)
    assert judged("optimized", fast)[gain].status == HOLDS
    slow = summary(same, (120.0, 120.0, 120.0))  # 4 a minute: 2x
    assert judged("optimized", slow)[gain].status == FAILS
    unlike = summary(other, (5.0, 5.0, 5.0))
    assert unlike["case_study_similarity_gate_passed"] is False and unlike["case_study_best_passing_stack"] == "baseline"
    assert judged("optimized", unlike)[gain].status == "holds for speed, fails the quality gate"
    few = summary(same, (1.0, 1.0, 1.0), documents=2)  # 2 at once: 120 a minute, but no service load
    assert few["case_study_is_service"] is False
    assert judged("optimized", few)[gain].status == NOT_TESTED


def test_a_pinned_stack_replaces_the_measured_batching_and_precision_choices():
    cfg = config.override(
        config.load("optimized", root=REPO), {"optimized.pinned": {"scheduler": "continuous", "max_batch_size": 32, "dtype": "float16"}}
    )
    choices = choose(MEASURED, min_kept_pct=89, pinned=cfg.optimized.pinned)
    by_area = {c.area: c for c in choices}
    assert by_area["batching"].overrides == {"serving.scheduler": "continuous", "serving.max_batch_size": 32}
    assert (by_area["precision"].choice, by_area["precision"].overrides) == ("float16", {"serving.dtype": "float16"})
    assert by_area["batching"].source == "params" and "pinned" in by_area["precision"].reason
    measured = {c.area: c for c in choose(MEASURED, min_kept_pct=89)}
    assert measured["precision"].choice == "bfloat16"  # unpinned: the gate's choice, as before


def test_a_pinned_stack_with_an_unknown_scheduler_is_refused():
    with pytest.raises(ConfigError, match="optimized.pinned.scheduler"):
        config.override(config.load("optimized", root=REPO), {"optimized.pinned": {"scheduler": "fifo"}})


def test_a_pinned_baseline_setting_is_not_applied_as_an_optimization():
    cfg = config.override(config.load("optimized", root=REPO), {"optimized.pinned": {"scheduler": "sequential", "dtype": "float32"}})
    choices = {c.area: c for c in choose(Upstream(), min_kept_pct=89, pinned=cfg.optimized.pinned)}
    assert not choices["batching"].applied and not choices["precision"].applied
    assert stack_overrides(list(choices.values())) == {}
