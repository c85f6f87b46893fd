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
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

F32_TOK_S = 20.0
FASTER = {"q8_0": 2.0}  # file-name part -> speed over F32
SAME_TOP1_PCT = 95.0


def install(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    here = str(Path(__file__).parent)
    for tool in ("llama-server", "llama-bench", "llama-quantize", "llama-perplexity"):
        script = bin_dir / tool
        body = f"import sys\nsys.path.insert(0, {here!r})\nimport fake_llama_cpp\nfake_llama_cpp.main({tool!r}, sys.argv[1:])\n"
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

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def _json(self, code: int, body: object) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            else:
                self._json(200, {"object": "list", "data": [{"id": known.alias}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if any("content" not in m for m in body.get("messages", [])):
                self._json(400, {"error": {"message": "All non-assistant messages must contain 'content'"}})
                return
            n = int(body["max_tokens"])
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for i in range(n):
                time.sleep(0.002)
                self.wfile.write(f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': f't{i} '}}]})}\n\n".encode())
            usage = {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n}
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())

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
