"""The launcher: a real server process, always stopped, also when it cannot start."""

from __future__ import annotations

import httpx
import psutil
import pytest
from conftest import write_params

from perfkit import config
from perfkit.serving.launch import LaunchError, launch


@pytest.fixture(scope="module")
def cfg(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("launch-root")
    write_params(root, {"model": {"path": str(tiny_model_dir)}, "hardware": {"device": "cpu", "threads": 1}})
    return config.load("serve", root=root)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_launcher_serves_measures_and_stops_the_server(cfg):
    with launch(cfg, overrides={"serving.scheduler": "dynamic", "serving.max_batch_size": 4}, warmup=False) as server:
        assert not _gone(server.pid)
        health = httpx.get(f"{server.base_url}/health").json()
        assert health["status"] == "ok" and health["scheduler"] == "dynamic"
        assert 0 < server.load_s < server.ready_s <= server.cold_start_s
        assert 0 < server.imports_s < server.ready_s - server.load_s  # spawn -> modules imported, from the server
        assert server.warmup_s == 0.0  # warm-up off
        assert server.log_path.is_file()
    assert _gone(server.pid)


def test_launcher_stops_the_server_when_the_caller_fails(cfg):
    with pytest.raises(RuntimeError, match="caller failed"):
        with launch(cfg, probe_cold_start=False) as server:
            assert server.cold_start_s is None
            raise RuntimeError("caller failed")
    assert _gone(server.pid)


def test_a_failed_start_raises_with_the_log_tail_and_leaves_no_process(cfg):
    before = _children()
    with pytest.raises(LaunchError, match="no such directory"):
        with launch(cfg, overrides={"model.path": "/nonexistent/model"}, timeout_s=120):
            pass
    assert all(_gone(pid) for pid in _children() - before)


def test_a_bad_override_is_refused_before_any_process_starts(cfg):
    from perfkit.config import ConfigError

    before = _children()
    with pytest.raises(ConfigError, match=r"serving\.nope.*unknown key"):
        with launch(cfg, overrides={"serving.nope": 1}, timeout_s=120):
            pass
    assert _children() == before
