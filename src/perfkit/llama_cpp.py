"""llama.cpp's offline tools, as a second engine's measuring instruments: quantize, bench, perplexity.

`make llama-server` builds them beside the server (one cmake build, native to this CPU):
- `llama-quantize` writes each precision from the F32 GGUF. SmolLM2's 576-wide tensors do not
  divide into the K-quants' 256-value blocks, so a K-quant file silently falls back to another type
  for them: every file's tensor types are read back from the file (`tensor_types`), never assumed.
- `llama-bench` times a request of the reference's shape (`-pg prompt,new`: one prefill of `prompt`
  tokens then `new` decoded ones), every repetition kept (`samples_ns`), so the output tokens/s has
  the same definition as the quantization stage's (new tokens over the request's time).
- `llama-perplexity --kl-divergence` scores a text against the F32 model's saved log-probabilities:
  perplexity ratio, mean KL divergence and "same top p", the share of positions whose most likely
  token is the F32 model's (top-1 agreement, the quantization stage's quality gate).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from perfkit.errors import PerfkitError

TOOLS = ("llama-server", "llama-bench", "llama-quantize", "llama-perplexity")
BUILD_COMMAND = "make llama-server"


class LlamaToolError(PerfkitError, RuntimeError):
    """A llama.cpp tool failed; the message ends with its output's tail."""


def missing_tools(bin_dir: Path) -> list[str]:
    """The tools `bin_dir` lacks (an empty list: all four are there and executable)."""
    return [name for name in TOOLS if not (bin_dir / name).is_file()]


def _run(cmd: list[str], timeout_s: float) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, errors="replace")
    except subprocess.TimeoutExpired:
        raise LlamaToolError(f"{Path(cmd[0]).name} ran past {timeout_s:g} s: {' '.join(cmd)}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise LlamaToolError(f"{Path(cmd[0]).name} exited with {done.returncode}: {' '.join(cmd)}\n{tail}")
    return done.stdout + done.stderr


def quantize(bin_dir: Path, f32: Path, precision: str, out_dir: Path, threads: int, timeout_s: float = 300.0) -> Path:
    """`f32` written in `precision` (a llama-quantize type name: F16, Q8_0, Q4_0, ...) under `out_dir`; F32 is `f32`
    itself, and a file already written from the same F32 file (not older than it) is reused."""
    if precision == "F32":
        return f32
    out = out_dir / f"{f32.stem.removesuffix('-f32')}-{precision.lower()}.gguf"
    if out.is_file() and out.stat().st_mtime >= f32.stat().st_mtime:
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    _run([str(bin_dir / "llama-quantize"), str(f32), str(partial), precision, str(threads)], timeout_s)
    shutil.move(partial, out)
    return out


def tensor_types(gguf: Path) -> dict[str, int]:
    """How many tensors the file holds in each type, e.g. {"Q8_0": 211, "F32": 61}."""
    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(gguf).tensors).most_common())


@dataclass(frozen=True)
class BenchRun:
    """One model's llama-bench repetitions: output tokens per second of each, for `new` tokens after `prompt`."""

    gguf: str
    prompt: int
    new: int
    tok_s: tuple[float, ...]


def bench(bin_dir: Path, ggufs: list[Path], prompt: int, new: int, repetitions: int, threads: int, timeout_s: float) -> list[BenchRun]:
    """llama-bench on every file in order (`-pg prompt,new`, `repetitions` each, `threads` threads)."""
    cmd = [str(bin_dir / "llama-bench"), "-p", "0", "-n", "0", "-pg", f"{prompt},{new}", "-r", str(repetitions)]
    cmd += ["-t", str(threads), "-o", "json"]
    for gguf in ggufs:
        cmd += ["-m", str(gguf)]
    out = _run(cmd, timeout_s)
    try:
        rows = json.loads(out[out.index("[") : out.rindex("]") + 1])
    except ValueError:
        raise LlamaToolError(f"llama-bench printed no JSON list: {out[-500:]!r}") from None
    by_file = {Path(r["model_filename"]).name: r for r in rows}
    runs = []
    for gguf in ggufs:
        row = by_file.get(gguf.name)
        if row is None:
            raise LlamaToolError(f"llama-bench printed no row for {gguf.name}")
        runs.append(BenchRun(gguf.name, prompt, new, tuple(new / (ns / 1e9) for ns in row["samples_ns"])))
    return runs


@dataclass(frozen=True)
class KLD:
    """llama-perplexity's comparison of a file with the F32 model on the same text."""

    ppl_ratio: float  # Mean PPL(Q)/PPL(base)
    kld_mean: float
    same_top1_pct: float  # "Same top p": positions whose most likely token is the base model's
    same_top1_err_pct: float  # its ± (one standard error, as llama.cpp prints it)


_NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_KLD_PATTERNS = {
    "ppl_ratio": rf"Mean PPL\(Q\)/PPL\(base\)\s*:\s*{_NUMBER}",
    "kld_mean": rf"Mean\s+KLD:\s*{_NUMBER}",
    "same_top1_pct": rf"Same top p:\s*{_NUMBER}",
    "same_top1_err_pct": rf"Same top p:\s*{_NUMBER}\s*±\s*{_NUMBER}",
}


def parse_kld(text: str) -> KLD:
    values = {}
    for name, pattern in _KLD_PATTERNS.items():
        found = re.search(pattern, text)
        if found is None:
            raise LlamaToolError(f"llama-perplexity's output has no {name!r} ({pattern}); its tail:\n{text[-800:]}")
        values[name] = float(found.group(found.lastindex or 1))
    return KLD(**values)


def _perplexity(bin_dir: Path, gguf: Path, text: Path, base: Path, ctx: int, chunks: int, threads: int) -> list[str]:
    return [str(bin_dir / "llama-perplexity"), "-m", str(gguf), "-f", str(text), "-c", str(ctx), "--chunks", str(chunks)] + [
        "-t", str(threads), "--kl-divergence-base", str(base)
    ]  # fmt: skip


def perplexity_base(bin_dir: Path, f32: Path, text: Path, base: Path, ctx: int, chunks: int, threads: int, timeout_s: float) -> None:
    """Save the F32 model's log-probabilities over `text` to `base` (what every other file is compared with)."""
    _run(_perplexity(bin_dir, f32, text, base, ctx, chunks, threads), timeout_s)


def kl_divergence(bin_dir: Path, gguf: Path, text: Path, base: Path, ctx: int, chunks: int, threads: int, timeout_s: float) -> KLD:
    """`gguf` scored on `text` against the saved F32 log-probabilities in `base`."""
    return parse_kld(_run([*_perplexity(bin_dir, gguf, text, base, ctx, chunks, threads), "--kl-divergence"], timeout_s))
