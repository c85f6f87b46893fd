"""The endpoint contract: every implementation answers the same request with a timed token stream, its usage, and
a malformed request with an error rather than an exception (llama-server's case skips where it is not built)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from perfkit import config
from perfkit.endpoints import llama_server
from perfkit.endpoints.base import NOT_AVAILABLE, ChatRequest, Endpoint, EndpointFacts
from perfkit.endpoints.serve import Watch, server_metrics

REPO = Path(__file__).resolve().parents[1]
ASKED = 5
MESSAGES = ({"role": "user", "content": "Summarize: the rain fell on the old house all night."},)


@contextmanager
def open_endpoint(kind: str, root: Path, tiny) -> Iterator[Endpoint]:
    from perfkit.serving.launch import launch

    cfg = config.load("serve", smoke=True, root=root)
    if kind == "in-process":
        from perfkit.endpoints.inprocess import InProcessEndpoint

        yield InProcessEndpoint(tiny[2], cfg.model.name)
    elif kind == "perfkit":
        with launch(cfg, probe_cold_start=True) as server:
            yield server
    elif kind == "openai":
        from perfkit.endpoints.openai import preflight

        with launch(cfg, probe_cold_start=False) as server:  # any OpenAI-compatible URL: here perfkit's own, unstarted by the test
            yield preflight(server.base_url)
    else:
        if llama_server.binary(REPO) is None:
            pytest.skip("no llama-server binary: `make llama-server` builds it")
        from perfkit.models import default_gguf_path

        with llama_server.launch(REPO, default_gguf_path(), parallel=1, threads=1, alias="smollm2-contract") as server:
            yield server


KINDS = ("in-process", "perfkit", "openai", "llama-server")


@pytest.mark.parametrize("kind", KINDS)
def test_every_endpoint_answers_with_a_timed_stream_usage_and_clean_errors(kind: str, perfkit_root: Path, tiny) -> None:
    with open_endpoint(kind, perfkit_root, tiny) as endpoint:
        assert isinstance(endpoint, Endpoint) and isinstance(endpoint.facts, EndpointFacts)
        assert endpoint.facts.kind == kind and endpoint.facts.model in endpoint.facts.models
        answer = endpoint.complete(ChatRequest(MESSAGES, ASKED))
        refused = endpoint.complete(ChatRequest(({"role": "user"},), ASKED))  # no content
        with Watch(endpoint, 0.05) as watch:
            endpoint.complete(ChatRequest(MESSAGES, 2))
        started = endpoint.start
    assert answer.ok and answer.error is None and answer.output_tokens == ASKED
    times = answer.chunk_times_s
    assert len(times) >= 1 and list(times) == sorted(times) and 0 < times[0] == answer.ttft_s <= times[-1] <= answer.e2e_s
    assert answer.prompt_tokens is not None and answer.prompt_tokens > 0
    assert not refused.ok and 400 <= refused.status < 600 and refused.error
    # Server-side figures exist only for a process perfkit started: sampled there, "not available" elsewhere.
    assert (watch.usage is not None) == (endpoint.pid is not None) == (kind in ("perfkit", "llama-server"))
    assert endpoint.facts.started_by_perfkit == (kind in ("perfkit", "llama-server"))
    figures = server_metrics(watch.usage, started)
    assert (figures["peak_rss_mb"] == NOT_AVAILABLE) == (kind in ("in-process", "openai"))
    assert (figures["cold_start_s"] != NOT_AVAILABLE) == (kind == "perfkit")


def test_a_load_generator_refuses_an_endpoint_without_a_url(perfkit_root: Path, tiny) -> None:
    from perfkit.endpoints.inprocess import InProcessEndpoint
    from perfkit.load.runner import LoadError, run_load

    cfg = config.load("serve", smoke=True, root=perfkit_root)
    with pytest.raises(LoadError, match="has no URL"):
        run_load(cfg, InProcessEndpoint(tiny[2], cfg.model.name), [], perfkit_root / "load")
