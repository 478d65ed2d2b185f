"""QLoRA (``adapter.quantize: nf4 | int8``): the frozen base's linear layers become bitsandbytes layers (the
output layer and embeddings stay as they were), only the adapter trains, the adapter reloads onto a
re-quantised base to the same outputs, and merging gives a plain full-precision model (the de-quantised base
plus the adapter) that transformers loads without bitsandbytes. Bad combinations are config errors naming the
keys (tests/test_adapter_kinds.py); without bitsandbytes a run stops before it starts, naming ``adapter.quantize`` and the install command."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quill.config import AdapterConfig, ConfigError, load_config
from quill.models import apply_adapter, load_adapter, merge_adapter, save_adapter
from quill.models.adapters import _linear_modules

IDS = torch.tensor([[5, 17, 300, 9, 42, 7, 1000, 3], [8, 6, 4, 2, 11, 13, 17, 19]])
TINY = Path(__file__).parent / "fixtures" / "train" / "tiny.yaml"
# the relative error ||W_dq - W|| / ||W|| of one weight matrix (nf4: 16 levels per block of 64; int8: 255 per row)
WEIGHT_ERROR = {"nf4": 0.15, "int8": 0.01}
# how close the quantised model's logits are to the model it computes with (the de-quantised base): nf4
# de-quantises the weight and multiplies in full precision; int8 also quantises the activations, per row
FORWARD_TOL = {"nf4": 1e-4, "int8": 0.02}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


def bnb_layers(model) -> list:
    import bitsandbytes as bnb
    return [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]


def quantized_base(base, kind):
    from quill.models.quantize import quantize_linears
    model = copy.deepcopy(base)
    return quantize_linears(model, _linear_modules(model), kind)


@pytest.fixture
def base(tiny_llama):
    pytest.importorskip("bitsandbytes")
    return copy.deepcopy(tiny_llama[0]).float().eval()


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantising_replaces_the_linear_layers_and_keeps_the_output_layer(kind, base):
    import bitsandbytes as bnb
    from quill.models.quantize import dequantize_merge, dequantized_weight, linear_weight_bytes
    originals = {n: m.weight.detach().clone() for n, m in _linear_modules(base).items()}
    before = linear_weight_bytes(base)
    model = quantized_base(base, kind)
    layer_type = bnb.nn.Linear4bit if kind == "nf4" else bnb.nn.Linear8bitLt
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, layer_type)}
    assert set(quantized) == set(originals)
    out = model.get_output_embeddings()
    assert type(out) is torch.nn.Linear and out.weight.dtype == torch.float32
    assert out.weight is model.get_input_embeddings().weight  # still tied, still the fp32 embeddings
    assert all(m.weight.dtype == (torch.uint8 if kind == "nf4" else torch.int8) for m in quantized.values())
    for name, layer in quantized.items():
        w = originals[name]
        err = (dequantized_weight(layer).float() - w).norm() / w.norm()
        assert 0 < err < WEIGHT_ERROR[kind], (name, float(err))
    # nf4: 4 bits a weight plus a byte of scale per 64, and per layer its 16-value code and the double
    # quantisation's 256-value table; int8: a byte a weight plus one fp32 scale a row
    per_layer = 1200 if kind == "nf4" else 0
    assert linear_weight_bytes(model) < before * (0.14 if kind == "nf4" else 0.28) + per_layer * len(quantized)
    plain = dequantize_merge(copy.deepcopy(model))
    assert not bnb_layers(plain) and not hasattr(plain, "is_loaded_in_4bit")
    torch.testing.assert_close(logits(model), logits(plain), atol=FORWARD_TOL[kind], rtol=FORWARD_TOL[kind])


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_qlora_trains_only_the_adapter_reloads_and_merges(kind, method, base, tmp_path):
    cfg = AdapterConfig(r=4, alpha=8, method=method, quantize=kind)
    model = apply_adapter(copy.deepcopy(base), cfg)
    n_linear = len(_linear_modules(base))
    assert len(bnb_layers(model)) == n_linear  # peft wrapped the bitsandbytes layers, it did not replace them
    assert type(model.get_base_model().get_output_embeddings()) is torch.nn.Linear
    start = logits(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    assert any("lora_magnitude_vector" in n for n in names) == (method == "dora")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    model.train()
    for _ in range(3):
        loss = model(IDS, labels=IDS).loss
        loss.backward()
        assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    trained = logits(model)
    assert not torch.allclose(trained, start, atol=1e-3)
    # the adapter alone reloads onto the base quantised again (quantisation is deterministic): the same model
    folder = save_adapter(tmp_path / "adapter", model)
    reloaded = load_adapter(quantized_base(base, kind), folder, trainable=False)
    assert len(bnb_layers(reloaded)) == n_linear
    torch.testing.assert_close(logits(reloaded), trained, atol=1e-5, rtol=1e-5)
    # merged: plain nn.Linear layers in fp32, the de-quantised base plus the adapter
    merged = merge_adapter(model)
    assert not hasattr(merged, "peft_config") and not bnb_layers(merged)
    assert all(type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 for m in _linear_modules(merged).values())
    torch.testing.assert_close(logits(merged), trained, atol=FORWARD_TOL[kind], rtol=FORWARD_TOL[kind])


def test_merging_the_untrained_adapter_stays_near_the_original_model(base):
    """Loosely: the merged model is the de-quantised base, so it differs from the original by the
    quantisation error only (both kinds keep the logits' direction; int8 is close in value too)."""
    original = logits(base)
    for kind, max_err in (("nf4", 0.5), ("int8", 0.05)):
        merged = merge_adapter(apply_adapter(copy.deepcopy(base), AdapterConfig(r=4, alpha=8, quantize=kind)))
        got = logits(merged)
        cos = torch.nn.functional.cosine_similarity(got.flatten(), original.flatten(), dim=0)
        assert cos > 0.99, (kind, float(cos))
        assert (got - original).abs().max() / original.abs().max() < max_err, kind


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_a_qlora_run_trains_saves_and_its_merged_model_loads_without_bitsandbytes(kind, tmp_path):
    pytest.importorskip("bitsandbytes")
    from safetensors import safe_open
    from quill.config import ModelConfig
    from quill.models import load_base, load_checkpoint
    from quill.train.pipeline import train
    sets = [f"stages.{s}.adapter.quantize={kind}" for s in ("dapt", "sft")]
    sets += ["stages.dapt.train.max_steps=4", "stages.sft.train.max_steps=2", "eval.prompts=[]"]
    run = train(load_config(TINY, sets), tmp_path / "run", base_dir=TINY.parent)
    summary = json.loads((run / "summary.json").read_text())
    dapt = summary["stages"]["dapt"]
    assert summary["complete"] and dapt["val_loss_after"] < dapt["val_loss_before"]
    for stage in ("dapt", "sft"):
        assert json.loads((run / stage / "adapter" / "adapter_config.json").read_text())["r"] == 4
        folder = run / stage / "model"
        assert "quantization_config" not in json.loads((folder / "config.json").read_text())
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            keys = list(f.keys())
            assert all(f.get_slice(k).get_dtype() == "F32" for k in keys)
        assert not any("absmax" in k or "SCB" in k or "quant" in k for k in keys)
    # the stage's merged model computes what its quantised base + adapter did
    q = load_adapter(quantized_base(load_base(ModelConfig(name="tiny-llama"), dtype="fp32")[0], kind),
                     run / "dapt" / "adapter", trainable=False).eval()
    merged = load_checkpoint(run / "dapt" / "model")[0].eval()
    torch.testing.assert_close(logits(merged), logits(q), atol=FORWARD_TOL[kind], rtol=FORWARD_TOL[kind])
    # plain transformers, in a process where bitsandbytes cannot be imported
    code = ("import sys; sys.modules['bitsandbytes'] = None\n"
            "import torch, transformers\n"
            f"m = transformers.AutoModelForCausalLM.from_pretrained({str(run / 'sft' / 'model')!r})\n"
            "print(bool(m(torch.tensor([[5, 17, 300]])).logits.isfinite().all()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("True"), out.stderr[-2000:]


def test_quantize_without_bitsandbytes_stops_the_run_before_it_starts(monkeypatch, tmp_path):
    from quill.train.pipeline import train
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes now raises ImportError
    cfg = load_config(TINY, ["stages.sft.adapter.quantize=nf4", "eval.prompts=[]"])
    with pytest.raises(ConfigError) as err:
        train(cfg, tmp_path / "run", base_dir=TINY.parent)
    msg = str(err.value)
    assert "stages.sft.adapter.quantize" in msg and "pip install 'quill[qlora]'" in msg and "\n" not in msg
    assert not (tmp_path / "run").exists()


def test_quantize_without_bitsandbytes_is_one_line_from_the_cli(monkeypatch, tmp_path, capsys):
    from quill.cli import main
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    rc = main(["train", str(TINY), "--set", "stages.dapt.adapter.quantize=int8", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "adapter.quantize" in err and "pip install 'quill[qlora]'" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_gpt2_conv1d_layers_are_refused_by_name(tiny_gpt2):
    pytest.importorskip("bitsandbytes")
    from quill.errors import ModelError
    with pytest.raises(ModelError, match="adapter.quantize: .*Conv1D"):
        apply_adapter(copy.deepcopy(tiny_gpt2[0]), AdapterConfig(r=4, alpha=8, quantize="nf4"))
