"""The engines stage's page: the effects on both engines as a figure, and the conclusion computed from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from perfkit.llama_cpp import BUILD_COMMAND

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from perfkit.stages.engines.result import EnginesResult

CHECKPOINT_NOTE = (
    "The default model's fp32 checkpoint is the shipped Q4_1 GGUF dequantized, and the F32 GGUF is converted from that "
    "checkpoint: every quality loss here is measured against a model already rounded to 4 bits once."
)


def effects_figure(res: EnginesResult) -> Figure:
    import matplotlib.pyplot as plt

    frame = res.effects().dropna(subset=["ratio"])
    effects = list(dict.fromkeys(frame["effect"]))
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(effects) + 1.5))
    for offset, (engine, color) in enumerate((("perfkit", "tab:blue"), ("llama.cpp", "tab:orange"))):
        mine = frame[frame["engine"] == engine].set_index("effect")
        ys = [i + 0.2 * (offset - 0.5) for i, e in enumerate(effects) if e in mine.index]
        rows = [mine.loc[e] for e in effects if e in mine.index]
        xs = [r["ratio"] for r in rows]
        low = [r["ratio"] - (r["ratio_ci_low"] if r["ratio_ci_low"] == r["ratio_ci_low"] else r["ratio"]) for r in rows]
        high = [(r["ratio_ci_high"] if r["ratio_ci_high"] == r["ratio_ci_high"] else r["ratio"]) - r["ratio"] for r in rows]
        ax.errorbar(xs, ys, xerr=[low, high], fmt="o", color=color, label=engine, capsize=3)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(effects)), effects)
    ax.set(xscale="log", xlabel="ratio (x; 95% interval over rounds or pairs)", title="each effect on both engines")
    ax.legend()
    fig.tight_layout()
    return fig


def conclusion(res: EnginesResult) -> str:
    if not res.built:
        return (
            f"llama.cpp is not built here (missing: {', '.join(res.missing)}): run `{BUILD_COMMAND}` (about 10 CPU-minutes, "
            f"kept out of `make setup` and CI) and rerun this stage. Nothing was measured, and no other stage reads this one."
        )
    lines = [CHECKPOINT_NOTE]
    for e in res.list_effects():
        ref = e.reference.text(".2f", "x", alone=" (one round)") if e.reference else "not measured"
        llama = e.llama.text(".2f", "x", alone=" (one round)") if e.llama else "not measured"
        lines.append(f"{e.name} ({e.what}): perfkit {ref}, llama.cpp {llama}; {e.judgement()}.")
    lines += _precision_lines(res) + _served_lines(res)
    if res.reference is None:
        lines.append("The quantization stage has no saved result, so the reference engine's precision ratios are missing.")
    return "\n\n".join(lines)


def _precision_lines(res: EnginesResult) -> list[str]:
    out = []
    gate = res.reference.gate if res.reference else 0.9
    parts = []
    for f in res.files:
        types = ", ".join(f"{t} x{n}" for t, n in f.tensor_types.items())
        quality = (
            f"top-1 agreement with F32 {f.kld.same_top1_pct:.1f}% (± {f.kld.same_top1_err_pct:.1f}), KL {f.kld.kld_mean:.4f}, "
            f"perplexity x{f.kld.ppl_ratio:.3f}"
            if f.kld
            else "the reference"
        )
        parts.append(f"{f.precision} ({f.size_mb:.0f} MB; {types}): {f.tok_s.text('.1f', ' tok/s')}, {quality}")
    out.append("llama.cpp's files, speed by llama-bench at the quantization stage's request shape: " + "; ".join(parts) + ".")
    fallen = [f.precision for f in res.files if f.precision not in f.tensor_types and f.precision not in ("F32", "F16", "BF16")]
    if fallen:
        out.append(f"{', '.join(fallen)}: no tensor of that type in the file: llama-quantize fell back for every tensor (576-wide rows).")
    passing = [f.precision for f in res.files if f.kld and f.kld.same_top1_pct >= 100 * gate]
    if res.reference:
        ref_pass = [name for name, s in res.reference.schemes.items() if s.top1_agreement >= gate]
        out.append(
            f"At the quantization stage's gate (top-1 agreement >= {gate:.0%}) llama.cpp keeps {', '.join(passing) or 'no file'} "
            f"beside F32; the reference engine keeps {', '.join(ref_pass) or 'no scheme'}."
        )
    return out


def _served_lines(res: EnginesResult) -> list[str]:
    out = []
    if res.arms:
        parts = [f"{a.engine} {a.name} {a.spread.text('.1f', ' tok/s')}" for a in res.arms]
        out.append("Served under the baseline's closed-loop load, fresh servers interleaved in rounds: " + "; ".join(parts) + ".")
    for arm in res.prefix:
        parts = [
            f"{t.prefix_tokens} tokens: {sum(t.cold_ms) / len(t.cold_ms):.0f} -> {sum(t.warm_ms) / len(t.warm_ms):.0f} ms"
            for t in arm.lengths
        ]
        out.append(f"Time to first token without -> with the prefix cached, {arm.endpoint.engine}: " + "; ".join(parts) + ".")
    return out
