"""llama.cpp's llama-server through perfkit's launcher and load client (needs `make llama-server`; skipped otherwise)."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

import pytest

from perfkit import config
from perfkit.endpoints import llama_server
from perfkit.models import default_gguf_path

REPO = Path(__file__).resolve().parents[1]


def test_the_command_binds_loopback_with_the_slots_asked():
    cmd = llama_server.command(Path("/x/llama-server"), Path("m.gguf"), 8123, parallel=8, threads=2, ctx_per_slot=512, alias="smollm2")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--parallel") + 1] == "8" and cmd[cmd.index("--ctx-size") + 1] == str(8 * 512)
    assert cmd[cmd.index("--alias") + 1] == "smollm2"
    assert cmd[cmd.index("--cache-type-k") + 1] == cmd[cmd.index("--cache-type-v") + 1] == "f16"  # llama.cpp's default
    assert "--cache-prompt" in cmd
    f32 = llama_server.command(
        Path("s"), Path("m"), 1, parallel=1, threads=2, ctx_per_slot=512, alias="a", kv_type="f32", cache_prompt=False
    )
    assert f32[f32.index("--cache-type-k") + 1] == f32[f32.index("--cache-type-v") + 1] == "f32" and "--no-cache-prompt" in f32


def test_a_missing_binary_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(llama_server.BINARY_ENV, str(tmp_path / "nope"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(llama_server.LlamaServerError, match="make llama-server"):
        with llama_server.launch(tmp_path, tmp_path / "m.gguf"):
            pass


@pytest.mark.skipif(llama_server.binary(REPO) is None, reason="no llama-server binary: `make llama-server` builds it")
def test_perfkit_load_measures_llama_server_on_the_shipped_gguf(perfkit_root):
    from perfkit.endpoints.openai import preflight
    from perfkit.load.runner import run_load, served_prompts

    cfg = config.load("baseline", smoke=True, root=perfkit_root)
    with llama_server.launch(REPO, default_gguf_path(), parallel=2, threads=1, alias="smollm2-test") as server:
        assert preflight(server.base_url).facts.model == server.facts.model == "smollm2-test"
        with TemporaryDirectory() as folder:
            load = run_load(cfg, server, served_prompts(cfg), Path(folder))
    assert load.summary.error_rate == 0.0 and load.summary.ok_requests == cfg.load.requests
    assert load.summary.throughput_tok_s > 0
