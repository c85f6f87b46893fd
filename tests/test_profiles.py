"""params.yaml profiles: `gpu` chosen by itself on CUDA (asked of the driver, faked here), named ones, recorded."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from perfkit import config, profiles, provenance, stages
from perfkit.config import ConfigError


@pytest.fixture()
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(profiles.PROFILE_ENV, raising=False)
    monkeypatch.setattr(profiles, "cuda_visible", lambda device: device in ("auto", "cuda"))


def test_on_cuda_a_run_gets_the_gpu_profile_and_a_smoke_run_gpu_smoke(fake_cuda):
    full = config.load("quantization", root=REPO)
    smoke = config.load("quantization", root=REPO, smoke=True)
    assert (full.profile, smoke.profile) == ("gpu", "gpu-smoke")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    gpu, gpu_smoke = raw["profiles"]["gpu"], raw["profiles"]["gpu-smoke"]
    assert list(full.quantization.batch_sizes) == gpu["quantization"]["batch_sizes"]
    assert full.measure.warmup_s == gpu["measure"]["warmup_s"] > 0
    assert list(smoke.quantization.batch_sizes) == gpu_smoke["quantization"]["batch_sizes"]  # the profile wins over smoke
    assert smoke.workload.max_new_tokens == raw["smoke"]["workload"]["max_new_tokens"]  # smoke's own sizes stay


def test_no_profile_on_the_cpu_and_none_when_the_device_is_pinned_to_cpu(monkeypatch, fake_cuda):
    raw = {"hardware": {"device": "cpu"}, "profiles": {"gpu": {}}}
    assert profiles.profile_name(raw, smoke=False) is None  # a GPU is there, but the params pin the CPU
    assert profiles.profile_name({"profiles": {"gpu": {}}}, smoke=False) == "gpu"
    monkeypatch.setattr(profiles, "cuda_visible", lambda device: False)
    assert config.load("baseline", root=REPO).profile is None


def test_a_cpu_build_of_torch_never_sees_a_gpu_even_where_the_driver_does(monkeypatch):
    import sys
    import types
    from importlib import metadata

    nvml = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 2)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for version, seen in (("2.11.0+cu130", True), ("2.13.0+cpu", False)):
        monkeypatch.setattr(metadata, "version", lambda name, v=version: v)
        profiles._gpu_count.cache_clear()
        assert profiles.cuda_visible("auto") is seen, version
    profiles._gpu_count.cache_clear()


def test_a_named_profile_is_applied_and_none_turns_it_off(monkeypatch, fake_cuda):
    monkeypatch.setenv(profiles.PROFILE_ENV, "gpu-smoke")
    assert config.load("baseline", root=REPO).profile == "gpu-smoke"
    monkeypatch.setenv(profiles.PROFILE_ENV, "none")
    assert config.load("baseline", root=REPO).profile is None


def test_an_unknown_profile_is_refused_naming_the_ones_there(monkeypatch):
    monkeypatch.setenv(profiles.PROFILE_ENV, "tpu")
    with pytest.raises(ConfigError, match="profile 'tpu'.*gpu, gpu-smoke"):
        config.load("baseline", root=REPO)


def test_a_bad_key_in_a_profile_is_refused_naming_the_key_and_the_profile():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profiles"]["gpu"]["measure"]["warmup_seconds"] = 2
    with pytest.raises(ConfigError, match="measure.warmup_seconds.*\n.*profile 'gpu'"):
        config.parse(raw, root=REPO, stage="baseline", profile="gpu")


def test_every_profile_validates_for_every_stage():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in raw["profiles"]:
        for stage in stages.registry():
            assert config.parse(raw, root=REPO, stage=stage, smoke=name.endswith("smoke"), profile=name).profile == name


def test_the_profile_survives_an_override_and_is_recorded_in_provenance(fake_cuda):
    cfg = config.override(config.load("baseline", root=REPO), {"load.users": 3})
    assert cfg.profile == "gpu" and cfg.load.users == 3
    prov = provenance.begin(cfg, stages.get("baseline"))
    assert prov["profile"] == "gpu"


def test_cuda_is_not_visible_when_cuda_visible_devices_hides_every_gpu(monkeypatch):
    monkeypatch.setattr(profiles, "_gpu_count", lambda: 1)
    assert profiles.cuda_visible("auto") is True
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert profiles.cuda_visible("auto") is False
