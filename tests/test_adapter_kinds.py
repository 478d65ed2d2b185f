"""More adapter kinds from peft: DoRA (``adapter.method: dora``), rank-stabilised scaling (``adapter.rslora``) and
gaussian / PiSSA initialisation (``adapter.init``): each starts as the function of the model it wraps, trains
only adapter weights, reloads from its saved folder to the same outputs, and merges into a plain model; bad
combinations are config errors naming the key."""
from __future__ import annotations

import copy

import pytest
import torch

from quill.config import AdapterConfig, ConfigError, validate
from quill.models import apply_adapter, load_adapter, merge_adapter, save_adapter

IDS = torch.tensor([[5, 17, 300, 9, 42, 7, 1000, 3]])
KINDS = {"dora": {"method": "dora"}, "rslora": {"rslora": True}, "gaussian": {"init": "gaussian"},
         "pissa": {"init": "pissa"}, "dora+rslora": {"method": "dora", "rslora": True}}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_adapter_kind_trains_saves_reloads_and_merges(kind, tiny_llama, tmp_path):
    base = copy.deepcopy(tiny_llama[0]).float()
    before = logits(base)
    cfg = AdapterConfig(r=4, alpha=8, **KINDS[kind])
    model = apply_adapter(copy.deepcopy(base), cfg)
    torch.testing.assert_close(logits(model), before, atol=1e-4, rtol=1e-4)  # an adapter starts as a no-op
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    if cfg.method == "dora":
        assert any("lora_magnitude_vector" in n for n in names)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        loss = model(IDS, labels=IDS).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    trained = logits(model)
    assert not torch.allclose(trained, before, atol=1e-4)
    assert model.peft_config["default"].use_dora == (cfg.method == "dora")
    assert model.peft_config["default"].use_rslora == cfg.rslora
    if kind != "pissa":  # a PiSSA adapter is relative to its residual base: it is only ever saved merged
        folder = save_adapter(tmp_path / "adapter", model)
        reloaded = load_adapter(copy.deepcopy(base), folder, trainable=False)
        torch.testing.assert_close(logits(reloaded), trained, atol=1e-5, rtol=1e-5)
    merged = merge_adapter(model)
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(logits(merged), trained, atol=1e-4, rtol=1e-4)


def test_rslora_scales_by_the_square_root_of_the_rank(tiny_llama):
    plain = apply_adapter(copy.deepcopy(tiny_llama[0]), AdapterConfig(r=16, alpha=32))
    stable = apply_adapter(copy.deepcopy(tiny_llama[0]), AdapterConfig(r=16, alpha=32, rslora=True))
    def scaling(model) -> float:  # of the first LoRA layer (attention modules have a float ``scaling`` of their own)
        return next(mod.scaling["default"] for mod in model.modules() if isinstance(getattr(mod, "scaling", None), dict))
    assert scaling(plain) == pytest.approx(32 / 16) and scaling(stable) == pytest.approx(32 / 16 ** 0.5)


@pytest.mark.parametrize("adapter,message", [
    ({"method": "full", "rslora": True}, "not with method: full"),
    ({"method": "full", "init": "gaussian"}, "not with method: full"),
    ({"init": "pissa", "merge": False}, "needs merge: true"),
    ({"method": "qlora"}, "method"),
    ({"init": "eva"}, "init"),
    ({"method": "full", "quantize": "nf4"}, "quantize.*not with method: full"),   # QLoRA (tests/test_qlora.py)
    ({"init": "pissa", "quantize": "int8"}, "quantize: not with init: pissa"),
    ({"merge": False, "quantize": "nf4"}, "quantize needs merge: true"),
    ({"quantize": "fp4"}, "quantize"),
])
def test_bad_adapter_combinations_name_the_key(adapter, message):
    raw = {"stages": [{"name": "sft", "kind": "sft", "data": {"source": "x.jsonl"}, "adapter": adapter}]}
    with pytest.raises(ConfigError, match=message) as err:
        validate(raw)
    assert "adapter" in str(err.value)


def test_a_dora_stage_runs_in_the_pipeline_and_its_model_reloads(tmp_path):
    """tiny.yaml with both stages as DoRA (rank-stabilised): the run saves adapters and merged models."""
    from pathlib import Path

    from quill.config import load_config
    from quill.models import load_checkpoint
    from quill.train.pipeline import train
    tiny = Path(__file__).parent / "fixtures" / "train" / "tiny.yaml"
    sets = [f"stages.{s}.adapter.{k}={v}" for s in ("dapt", "sft") for k, v in (("method", "dora"), ("rslora", "true"))]
    sets += ["stages.dapt.train.max_steps=1", "stages.sft.train.max_steps=1", "eval.prompts=[]"]
    run = train(load_config(tiny, sets), tmp_path / "run", base_dir=tiny.parent)
    import json
    saved = json.loads((run / "dapt" / "adapter" / "adapter_config.json").read_text())
    assert saved["use_dora"] is True and saved["use_rslora"] is True
    model = load_checkpoint(run / "sft" / "model")[0]
    assert not hasattr(model, "peft_config") and logits(model).isfinite().all()
