"""A stand-in for llama.cpp's four tools, so the engines stage runs end to end where llama.cpp is not built.

`install(bin_dir)` writes `llama-server`, `llama-bench`, `llama-quantize` and `llama-perplexity` into
`bin_dir`, each this file run with the tool's name. Their outputs are fixed, so a test knows the
figures the stage must report: a file whose name holds "q8_0" benches at twice F32's tokens/s, every
file agrees with F32 on 95% of top-1 tokens, and the server streams exactly the tokens asked for.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from http.server import ThreadingHTTPServer
from pathlib import Path

from fakes.fake_openai import handler

F32_TOK_S = 20.0
FASTER = {"q8_0": 2.0}  # file-name part -> speed over F32
SAME_TOP1_PCT = 95.0


def install(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    tests = str(Path(__file__).parents[1])
    for tool in ("llama-server", "llama-bench", "llama-quantize", "llama-perplexity"):
        script = bin_dir / tool
        body = f"import sys\nsys.path.insert(0, {tests!r})\nfrom fakes import fake_llama_cpp\nfake_llama_cpp.main({tool!r}, sys.argv[1:])\n"
        script.write_text(f"#!{sys.executable}\n{body}")
        script.chmod(0o755)
    return bin_dir


def bench(args: list[str]) -> None:
    models = [args[i + 1] for i, a in enumerate(args) if a == "-m"]
    prompt, new = map(int, args[args.index("-pg") + 1].split(","))
    reps = int(args[args.index("-r") + 1])
    rows = []
    for m in models:
        speed = F32_TOK_S * next((f for part, f in FASTER.items() if part in Path(m).name), 1.0)
        rows.append({"model_filename": m, "n_prompt": prompt, "n_gen": new, "samples_ns": [int(new / speed * 1e9)] * reps})
    print(json.dumps(rows))


def perplexity(args: list[str]) -> None:
    if "--kl-divergence" not in args:
        Path(args[args.index("--kl-divergence-base") + 1]).write_bytes(b"base")
        print("Final estimate: PPL = 10.0 +/- 1.0")
        return
    print("Mean PPL(Q)/PPL(base)         :   1.010000 ±   0.001000")
    print("Mean    KLD:   0.004000 ±   0.000100")
    print(f"Same top p: {SAME_TOP1_PCT:.3f} ± 1.000 %")


def serve(args: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--alias")
    known, _ = parser.parse_known_args(args)

    models = {"object": "list", "data": [{"id": known.alias}]}
    Handler = handler(models=models, token_delay_s=0.002)
    ThreadingHTTPServer(("127.0.0.1", known.port), Handler).serve_forever()


def main(tool: str, args: list[str]) -> None:
    if tool == "llama-quantize":
        shutil.copy(args[0], args[1])
        print(f"quantized to {args[2]}")
    elif tool == "llama-bench":
        bench(args)
    elif tool == "llama-perplexity":
        perplexity(args)
    else:
        serve(args)
