"""A token bucket counted in generated tokens, through the REST app: a request costs its max_tokens."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from test_serving_app import serving_config

from perfkit.models import Embedder
from perfkit.serving.app import create_app


def test_a_bucket_in_tokens_charges_max_tokens_and_refuses_with_retry_after(tiny, tiny_model_dir, tmp_path):
    _, _, engine = tiny
    bucket = {"enabled": True, "unit": "tokens", "tokens_per_second": 0.01, "burst": 10}  # refills 1 token in 100 s
    cfg = serving_config(tmp_path, tiny_model_dir, rate_limit=bucket, max_new_tokens_limit=16)
    with TestClient(create_app(cfg, engine, Embedder.load())) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)

        def ask(key: str, tokens: int):
            body = {"model": cfg.model.name, "prompt": "Emma", "max_tokens": tokens, "min_tokens": tokens, "ignore_eos": True}
            return client.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})

        assert ask("a", 4).status_code == 200 and ask("a", 4).status_code == 200  # 8 of 10 spent
        refused = ask("a", 4)  # 2 left: a request for 4 waits
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 100
        assert "tokens" in refused.json()["error"]["message"]
        assert ask("a", 2).status_code == 200  # a smaller one still fits
        assert ask("b", 8).status_code == 200  # another key has its own bucket
        embed = client.post("/v1/embeddings", json={"model": cfg.model.embedding_name, "input": "x"}, headers={"Authorization": "Bearer b"})
        assert embed.status_code == 200  # an embedding costs one: b had 2 left
