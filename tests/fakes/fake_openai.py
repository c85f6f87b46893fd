"""A stand-in OpenAI chat server for tests: lists its models, checks a key, streams the tokens asked for.

`handler(...)` returns the request handler a `ThreadingHTTPServer` serves: `GET /health` and
`/v1/models`, and a streamed `POST /v1/chat/completions` of `max_tokens - short_by` tokens (at least
one) with `usage` and `data: [DONE]`; a message without content is refused with 400 as llama-server
refuses it, and with `refuse_fixed` so is any request carrying `min_tokens`/`ignore_eos` (cloud APIs).
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler


def handler(
    *,
    models: object,
    key: str | None = None,
    refuse_fixed: bool = False,
    short_by: int = 0,
    token_delay_s: float = 0.0,
    seen: list | None = None,
) -> type[BaseHTTPRequestHandler]:
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

        def _authorized(self) -> bool:
            if key and self.headers.get("Authorization") != f"Bearer {key}":
                self._json(401, {"error": {"message": "bad key"}})
                return False
            return True

        def do_GET(self) -> None:
            if self._authorized():
                self._json(200, {"status": "ok"} if self.path == "/health" else models)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if not self._authorized():
                return
            if seen is not None:
                seen.append(body)
            if any("content" not in m for m in body.get("messages", [])):
                self._json(400, {"error": {"message": "All non-assistant messages must contain 'content'"}})
                return
            if refuse_fixed and ("min_tokens" in body or "ignore_eos" in body):
                self._json(400, {"error": {"message": "Unrecognized request argument supplied: min_tokens"}})
                return
            n = max(1, int(body["max_tokens"]) - short_by)
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for i in range(n):
                time.sleep(token_delay_s)
                self.wfile.write(f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': f't{i} '}}]})}\n\n".encode())
            usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())

    return Handler
