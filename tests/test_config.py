"""The typed config: shipped configs validate, errors name the key path, --set overrides work."""
from pathlib import Path

import pytest

from quill.config import ConfigError, apply_override, load_config, packaged_config, validate

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "src" / "quill" / "configs").glob("*.yaml"))
TINY = ROOT / "tests" / "fixtures" / "train" / "tiny.yaml"


def minimal(**train):
    return {"stages": [{"name": "dapt", "kind": "dapt", "data": {"source": "x.jsonl"}, "train": train}]}


@pytest.mark.parametrize("path", SHIPPED + [TINY], ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.stages and all(s.train.lr > 0 for s in cfg.stages)


def test_demo_is_packaged_and_offline():
    cfg = load_config(packaged_config("demo"))
    assert cfg.model.name == "smollm2-135m"
    assert [s.kind for s in cfg.stages] == ["dapt", "sft"]
    assert all(s.data.source == "gutenberg" for s in cfg.stages)


def test_bad_value_names_the_key_path():
    with pytest.raises(ConfigError) as e:
        validate(minimal(lr=0))
    assert "stages[0].train.lr: must be > 0" in str(e.value)


def test_unknown_key_is_an_error_naming_it():
    raw = minimal()
    raw["stages"][0]["train"]["learning_rate"] = 1e-4
    with pytest.raises(ConfigError) as e:
        validate(raw)
    assert "stages[0].train.learning_rate: unknown key" in str(e.value)


def test_bad_literal_and_missing_key():
    raw = minimal()
    raw["stages"][0]["kind"] = "rlhf"
    del raw["stages"][0]["data"]["source"]
    msg = str(pytest.raises(ConfigError, validate, raw).value)
    assert "stages[0].kind:" in msg and "stages[0].data.source: required key is missing" in msg


def test_split_fractions_must_leave_a_train_split():
    raw = minimal()
    raw["stages"][0]["data"]["split"] = {"val": 0.6, "test": 0.5}
    assert "stages[0].data.split" in str(pytest.raises(ConfigError, validate, raw).value)


def test_override_by_stage_name_and_index():
    cfg = load_config(TINY, ["stages.dapt.train.lr=5e-5", "stages[1].train.micro_batch=3", "model.name=tiny-gpt2"])
    assert cfg.stage("dapt").train.lr == 5e-5
    assert cfg.stages[1].train.micro_batch == 3
    assert cfg.model.name == "tiny-gpt2"


def test_override_errors_are_clear():
    raw = minimal()
    with pytest.raises(ConfigError, match="no entry named 'sft'"):
        apply_override(raw, "stages.sft.train.lr=1")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_override(raw, "stages.dapt.train.lr")
    with pytest.raises(ConfigError, match="not valid YAML"):
        apply_override(raw, "name=!!python/name:os.system")
    with pytest.raises(ConfigError, match=r"stages\[0\]\.train\.lr: must be > 0"):
        load_config(TINY, ["stages.dapt.train.lr=-1"])


def test_bool_override_parses_false_as_false():
    cfg = load_config(TINY, ["stages.dapt.adapter.merge=false"])
    assert cfg.stage("dapt").adapter.merge is False


def test_compile_on_off_survive_yaml_booleans():
    cfg = load_config(TINY, ["stages.dapt.train.compile=on", "stages[1].train.compile=off"])
    assert cfg.stage("dapt").train.compile == "on" and cfg.stages[1].train.compile == "off"
    with pytest.raises(ConfigError, match=r"stages\[0\]\.train\.compile"):
        load_config(TINY, ["stages.dapt.train.compile=sometimes"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    code = tmp_path / "code.yaml"
    code.write_text("stages: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError):  # safe loader: tags that run code are refused
        load_config(code)


def test_shipped_configs_load_by_name_and_read_paths_from_the_working_directory(tmp_path, monkeypatch):
    from quill.config import config_base_dir, packaged_configs, resolve_config_path
    assert {"demo", "demo-dpo", "gpt2-reference", "deepseek-coder-1.3b-reference"} <= set(packaged_configs())
    for name in packaged_configs():
        assert resolve_config_path(name) == packaged_config(name)
        assert load_config(name).name == load_config(f"{name}.yaml").name
    monkeypatch.chdir(tmp_path)
    assert config_base_dir("demo-dpo") == tmp_path  # `runs/demo/...` in a shipped config: the user's runs
    own = tmp_path / "cfgs" / "mine.yaml"
    own.parent.mkdir()
    own.write_text(packaged_config("demo").read_text())
    assert config_base_dir(own) == own.parent and config_base_dir("cfgs/mine.yaml") == own.parent
    with pytest.raises(ConfigError, match="shipped configs, usable by name: .*gpt2-reference"):
        load_config("gpt2-refrence")
