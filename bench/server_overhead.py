"""Server overhead: what HTTP, JSON, the scheduler and the event loop add to one generation.

Interleaved pairs, one user, sequential scheduler: for each prompt, the engine generates it in
this process, then the same token ids go to the reference server (`/v1/completions`, fixed output
length, a kept-alive connection) and the client times the whole answer. Both sides use the same
model, threads and output length; the in-process engine runs on one worker thread as the server's
does; the server sits idle while the in-process engine runs (and the other way round), so the
paired difference is the serving path's cost. Interleaving cancels
slow drifts (thermal, other tenants) that back-to-back blocks would turn into a bias.

Target (issue 3): median paired overhead <= 5 ms + 5% of the engine's median time. The verdict
uses the median's bootstrap 95% CI: pass when the whole CI is under the margin, fail when it is
all above, and "noisy" (neither) when the CI is wider than the margin itself; a CI narrower than
the margin that straddles it is "borderline".

    .venv/bin/python bench/server_overhead.py [--pairs 20] [--threads N] [--stream] [--smoke]

`--stream` reads each answer as server-sent events, a token each, as the load generator and a chat
client do: what streaming adds per token (an event-loop wake-up, a detokenization, a write) beside the
rest.

Threads matter on a small machine. libgomp gives each thread that enters a parallel region its
own team of OpenMP threads, and once a process holds more OpenMP threads than there are cores it
cuts their spin-wait to 100 spins (GOMP_SPINCOUNT), so every parallel region waits for a sleeping
thread to be woken. A server whose warm-up and embeddings ran on other threads than its
generation was several percent slower than the engine in-process at 2 threads on 2 cores, and as
fast at 1 thread; it now does all torch work on one thread. `--threads` sets both sides (default
`hardware.threads`), to check a thread count.

Prints one line per pair, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from perfkit import config
from perfkit.engine import Engine
from perfkit.hardware import now, pin_threads, resolve_device
from perfkit.measure import Latency
from perfkit.models import load_causal_lm
from perfkit.serving.launch import launch
from perfkit.stats import bootstrap_ci
from perfkit.workload import summary_prompts

MARGIN_MS = 5.0
MARGIN_FRACTION = 0.05
WARMUP_PAIRS = 2


def verdict(ci_ms: tuple[float, float], margin_ms: float) -> str:
    lo, hi = ci_ms
    if hi - lo > margin_ms:
        return "noisy"
    if hi <= margin_ms:
        return "pass"
    if lo > margin_ms:
        return "fail"
    return "borderline"


def answered(client: httpx.Client, body: dict) -> str:
    response = client.post("/v1/completions", json=body)
    response.raise_for_status()
    return response.json()["choices"][0]["text"]


def streamed(client: httpx.Client, body: dict) -> str:
    """The answer read as server-sent events, one per token, as a chat client reads it."""
    parts = []
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data:") and (data := line[5:].strip()) != "[DONE]":
                parts += [choice.get("text") or "" for choice in json.loads(data).get("choices") or ()]
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20, help="timed pairs (at least 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, both sides (default: hardware.threads)")
    parser.add_argument("--smoke", action="store_true", help="params.yaml's smoke overrides (seconds, not minutes)")
    parser.add_argument("--stream", action="store_true", help="read the answer as server-sent events, a token each")
    args = parser.parse_args(argv)
    if args.pairs < 20:
        parser.error("--pairs: at least 20 pairs make the CI worth reading")
    cfg = config.load("serve", smoke=args.smoke)
    threads = pin_threads(args.threads or cfg.hardware.threads)
    device = resolve_device(cfg.hardware.device)
    worker = ThreadPoolExecutor(max_workers=1)  # every torch call of the in-process side on this one thread, as the server's

    def build() -> Engine:
        model, tokenizer = load_causal_lm(cfg.resolve(cfg.model.path), device)
        return Engine(model, tokenizer, device, prepack=cfg.hardware.prepack)  # the server's form

    engine = worker.submit(build).result()
    tokenizer = engine.tokenizer
    n_tokens = cfg.workload.max_new_tokens
    prompts = summary_prompts(
        tokenizer, cfg.corpus_dir, args.pairs + WARMUP_PAIRS, cfg.workload.prompt_tokens, cfg.workload.passage_words, cfg.workload.seed
    )
    overrides = {"serving.scheduler": "sequential", "serving.rate_limit.enabled": False, "hardware.threads": threads}
    engine_s, served_s = [], []
    with launch(cfg, overrides=overrides, probe_cold_start=False) as server, httpx.Client(base_url=server.base_url, timeout=600) as client:
        for i, prompt in enumerate(prompts):
            ids = list(prompt.input_ids)
            t0 = now(device)
            local = worker.submit(engine.generate, ids, n_tokens, False).result()
            t1 = now(device)
            body = {"model": cfg.model.name, "prompt": ids, "max_tokens": n_tokens, "ignore_eos": True, "stream": args.stream}
            text = streamed(client, body) if args.stream else answered(client, body)
            t2 = now(device)
            if text != local.text:
                raise SystemExit(f"pair {i}: the server's answer differs from the engine's; the comparison is void")
            if i < WARMUP_PAIRS:
                continue
            engine_s.append(t1 - t0)
            served_s.append(t2 - t1)
            print(f"pair {i - WARMUP_PAIRS + 1:3d}: engine {1000 * (t1 - t0):8.1f} ms  served {1000 * (t2 - t1):8.1f} ms", flush=True)
    worker.shutdown()
    diffs_ms = 1000.0 * (np.array(served_s) - np.array(engine_s))
    engine_lat, served_lat = Latency.from_samples(engine_s), Latency.from_samples(served_s)
    median_ms = float(np.median(diffs_ms))
    ci = bootstrap_ci(diffs_ms)
    margin_ms = MARGIN_MS + MARGIN_FRACTION * engine_lat.p50
    result = {
        "pairs": len(diffs_ms),
        "threads": threads,
        "prompt_tokens": cfg.workload.prompt_tokens,
        "output_tokens": n_tokens,
        "streamed": args.stream,
        **engine_lat.as_metrics("engine_latency"),
        **served_lat.as_metrics("served_latency"),
        "overhead_ms_p50": median_ms,
        "overhead_ms_ci95_low": ci[0],
        "overhead_ms_ci95_high": ci[1],
        "overhead_pct": 100.0 * median_ms / engine_lat.p50,
        "target_margin_ms": margin_ms,
        "verdict": verdict(ci, margin_ms),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
