from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from perfkit import config
from perfkit.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_validate_for_every_stage_and_in_smoke_mode():
    from perfkit import stages

    for stage in stages.registry():
        cfg = config.load(stage, root=REPO)
        assert cfg.stage == stage and cfg.out_dir == REPO / "experiments" / stage
        smoke = config.load(stage, root=REPO, smoke=True)
        assert smoke.smoke and smoke.out_dir == REPO / config.SMOKE_EXPERIMENTS / stage  # never the committed results


def test_smoke_overrides_are_merged_over_the_sections():
    raw = repo_params()
    full = config.parse(raw, root=REPO, stage="quantization")
    smoke = config.parse(raw, root=REPO, stage="quantization", smoke=True)
    assert smoke.eval.tokens == raw["smoke"]["eval"]["tokens"] < full.eval.tokens
    assert smoke.model == full.model  # untouched sections stay as they are


def test_unknown_key_names_the_key_and_the_allowed_keys():
    raw = repo_params()
    raw["quantization"]["scheme"] = ["fp32"]
    with pytest.raises(ConfigError) as err:
        config.parse(raw, root=REPO, stage="quantization")
    msg = str(err.value)
    assert "quantization.scheme" in msg and "allowed:" in msg and "schemes" in msg


def test_unknown_section_is_refused():
    raw = repo_params() | {"quantisation": {}}
    with pytest.raises(ConfigError, match=r"quantisation.*unknown key; allowed: .*quantization"):
        config.parse(raw, root=REPO, stage="quantization")


def test_unknown_scheme_lists_the_allowed_schemes():
    raw = repo_params()
    raw["quantization"]["schemes"] = ["fp32", "bf16", "int9"]
    with pytest.raises(ConfigError) as err:
        config.parse(raw, root=REPO, stage="quantization")
    msg = str(err.value)
    assert "quantization.schemes[2] = 'int9'" in msg and "int8-dynamic" in msg


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("hardware", "device", "tpu", "hardware.device = 'tpu'"),
        ("hardware", "threads", 0, "hardware.threads = 0"),
        ("eval", "stride", 4096, "stride"),
        ("measure", "min_repeats", "many", "measure.min_repeats = 'many'"),
    ],
)
def test_bad_values_fail_with_the_key(section, key, value, needle):
    raw = repo_params()
    raw[section][key] = value
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(".", r"\.")):
        config.parse(raw, root=REPO, stage="quantization")


def test_root_found_by_walking_up_from_notebooks(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.delenv("PERFKIT_ROOT", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path / "notebooks")
    assert config.find_root() == tmp_path.resolve()
    monkeypatch.setenv("DVC_ROOT", str(REPO))
    assert config.find_root() == REPO


def test_config_is_frozen_and_flattens_for_mlflow():
    cfg = config.load("quantization", root=REPO)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.hardware.threads = 8  # type: ignore[misc]
    flat = cfg.flat()
    assert flat["hardware.threads"] == cfg.hardware.threads
    assert "root" not in flat


def test_output_spread_gives_the_range_of_served_output_lengths(tmp_path):
    from perfkit.config import WorkloadConfig

    assert WorkloadConfig(max_new_tokens=32).output_range == (32, 32)
    assert WorkloadConfig(max_new_tokens=32, output_spread=0.75).output_range == (8, 56)
    assert WorkloadConfig(max_new_tokens=2, output_spread=0.9).output_range[0] == 1  # never below one token
