"""An external endpoint: the pre-flight's one-line refusals, a key that reaches Locust only through the
environment, endpoints without min_tokens/ignore_eos, and short answers counted as truncated."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer

import pytest
from fakes.fake_openai import handler

from perfkit import config
from perfkit.endpoints.openai import TargetError, preflight
from perfkit.load.runner import run_load, served_prompts

KEY = "sk-test-not-a-real-key"


@contextmanager
def fake_endpoint(*, models=None, key=KEY, refuse_fixed=False, short_by=0) -> Iterator[tuple[str, list[dict]]]:
    """A stand-in OpenAI server: checks the key, lists `models`, streams `max_tokens - short_by` tokens."""
    seen: list[dict] = []

    models = models if models is not None else {"object": "list", "data": [{"id": "cloud-model"}]}
    Handler = handler(models=models, key=key, refuse_fixed=refuse_fixed, short_by=short_by, seen=seen)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()


def test_preflight_refuses_each_kind_of_bad_endpoint_in_one_line(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", KEY)
    with pytest.raises(TargetError, match="not reachable"):
        preflight("http://127.0.0.1:9")
    with fake_endpoint() as (url, _):
        with pytest.raises(TargetError, match="refused the API key"):
            preflight(url)
        with pytest.raises(TargetError, match="does not serve model 'other'.*cloud-model"):
            preflight(url, "other", "FAKE_KEY")
        with pytest.raises(TargetError, match="NOPE_KEY.*not set"):
            preflight(url, None, "NOPE_KEY")
    with fake_endpoint(models={"models": ["x"]}) as (url, _):
        with pytest.raises(TargetError, match="not an OpenAI model list"):
            preflight(url, None, "FAKE_KEY")
    with fake_endpoint() as (url, _):
        assert preflight(url, None, "FAKE_KEY").facts.fixed_length


def test_an_endpoint_refusing_min_tokens_is_asked_again_without(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", KEY)
    with fake_endpoint(refuse_fixed=True) as (url, seen):
        target = preflight(url, None, "FAKE_KEY")
    assert target.facts.model == "cloud-model" and not target.facts.fixed_length
    assert "min_tokens" in seen[0] and "min_tokens" not in seen[-1]


def test_the_key_reaches_locust_only_by_environment_and_short_answers_count_as_truncated(perfkit_root, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_KEY", KEY)
    cfg = config.load("baseline", smoke=True, root=perfkit_root)
    prompts = served_prompts(cfg)[:2]
    with fake_endpoint(short_by=1) as (url, seen):
        target = preflight(url, None, "FAKE_KEY")
        assert target.facts.fixed_length
        run = run_load(cfg, target, prompts, tmp_path / "short", users=1, requests=3, warmup_requests=0)
    assert KEY not in (tmp_path / "short" / "spec.json").read_text()
    assert all(b["model"] == "cloud-model" and b["ignore_eos"] for b in seen[-3:])
    s = run.summary
    assert s.requests == 3 and s.ok_requests == 0 and s.truncated == 3 and s.as_metrics()["errors_truncated"] == 3
    assert "errors_http_200" not in s.as_metrics()

    with fake_endpoint(refuse_fixed=True, short_by=1) as (url, seen):
        target = preflight(url, None, "FAKE_KEY")
        run = run_load(cfg, target, prompts, tmp_path / "free", users=1, requests=3, warmup_requests=0)
    assert all("min_tokens" not in b and "ignore_eos" not in b for b in seen[-3:])
    assert run.summary.ok_requests == 3 and run.summary.truncated == 0  # no fixed length asked: lengths as produced
    assert {t.prompt_tokens for t in run.timings} == {7}  # the endpoint's own count, from its usage
