"""The memory planner (``quill.train.memory``, ``quill train CONFIG --dry-run``): parameter counts from a config
equal a real model's, LoRA / DoRA counts equal peft's, sharding divides exactly what it shards, QLoRA costs less
than LoRA, and a 7B Llama's verdicts are the known ones (full fine-tuning needs sharding, QLoRA fits 24 GB)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig
from transformers.pytorch_utils import Conv1D

from quill.cli import main
from quill.config import AdapterConfig, TrainConfig
from quill.models import apply_adapter
from quill.train.memory import (GIB, SHARDED, estimate, fitting, format_plan, model_shape, param_counts, plan,
                                trainable_params)

FIXTURES = Path(__file__).parent / "fixtures" / "train"
TINY = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4, vocab_size=300,
            max_position_embeddings=64)
CONFIGS = {
    "llama-tied-gqa": LlamaConfig(**TINY, num_key_value_heads=2, tie_word_embeddings=True),
    "llama-untied": LlamaConfig(**TINY, tie_word_embeddings=False),
    "llama-biases-head-dim": LlamaConfig(**TINY, num_key_value_heads=1, head_dim=16, attention_bias=True,
                                         mlp_bias=True),
    "gpt2": GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=64, vocab_size=300),
    "gpt2-inner": GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=48, vocab_size=300, n_inner=72),
}
LLAMA_7B = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       vocab_size=32000)
BF16 = TrainConfig(precision="bf16", micro_batch=2, block_size=1024)


def build(name: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(copy.deepcopy(CONFIGS[name]))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request):
    return request.param, build(request.param)


def test_parameter_counts_equal_the_built_model(tiny):
    name, model = tiny
    counts = param_counts(model_shape(CONFIGS[name]))
    assert counts.total == sum(p.numel() for p in model.parameters())   # tied weights counted once
    assert (counts.lm_head == 0) == (model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head]
    assert counts.block_weights == sum(m.weight.numel() for m in linears)   # what QLoRA quantizes
    assert model_shape(CONFIGS[name].to_dict()) == model_shape(CONFIGS[name])   # config.json reads the same


LLAMAS, GPT2S = [n for n in CONFIGS if n.startswith("llama")], [n for n in CONFIGS if n.startswith("gpt2")]
ADAPTERS = {"all-linear": AdapterConfig(targets="all-linear"), "attention": AdapterConfig(targets="attention", r=8),
            "q,down": AdapterConfig(targets="q_proj,down_proj"), "c_proj": AdapterConfig(targets=["c_proj"], r=2),
            "dora": AdapterConfig(method="dora", r=4),
            "dora-attention": AdapterConfig(method="dora", targets="attention")}
ADAPTER_CASES = [(n, a) for n in CONFIGS for a in ("all-linear", "attention")] + \
    [(n, a) for n in LLAMAS for a in ("q,down", "dora", "dora-attention")] + [(n, "c_proj") for n in GPT2S]


@pytest.mark.parametrize("name,adapter", ADAPTER_CASES, ids=[f"{n}-{a}" for n, a in ADAPTER_CASES])
def test_adapter_counts_equal_peft(name, adapter):
    """quill's own adapter path (its target resolution, then peft) trains exactly the planned parameters."""
    peft_model = apply_adapter(build(name), ADAPTERS[adapter])
    assert trainable_params(model_shape(CONFIGS[name]), ADAPTERS[adapter]) == \
        peft_model.get_nb_trainable_parameters()[0]


def test_full_fine_tuning_trains_every_parameter(tiny):
    name, model = tiny
    assert trainable_params(model_shape(CONFIGS[name]), AdapterConfig(method="full")) == \
        sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("devices", [2, 4, 8])
def test_sharding_divides_exactly_what_it_shards(method, devices):
    shape, adapter = model_shape(LLAMA_7B), AdapterConfig(method=method)
    one = estimate(shape, adapter, BF16, "single")
    ddp, zero2, zero3 = (estimate(shape, adapter, BF16, s, devices) for s in ("ddp", "zero2", "zero3"))
    assert (ddp.weights, ddp.grads, ddp.optimizer, ddp.activations) == \
        (one.weights, one.grads, one.optimizer, one.activations)
    assert (zero2.weights, zero2.grads, zero2.optimizer) == (one.weights, one.grads / devices, one.optimizer / devices)
    assert (zero3.weights, zero3.grads, zero3.optimizer) == \
        (one.weights / devices, one.grads / devices, one.optimizer / devices)
    assert zero2.activations == zero3.activations == one.activations   # each device runs its own micro-batch
    assert estimate(shape, adapter, BF16, "single", devices) == one      # one device is one device


def test_quantized_bases_cost_less_than_lora_and_only_in_the_weights():
    shape = model_shape(LLAMA_7B)
    lora, int8, nf4 = (estimate(shape, AdapterConfig(quantize=q), BF16, "single") for q in (None, "int8", "nf4"))
    assert nf4.total < int8.total < lora.total
    assert (nf4.grads, nf4.optimizer, nf4.activations) == (lora.grads, lora.optimizer, lora.activations)
    assert (nf4.method, int8.method, lora.method) == ("qlora-nf4", "qlora-int8", "lora")
    blocks = param_counts(shape).block_weights
    assert lora.weights - nf4.weights == pytest.approx(blocks * (2 - 0.5 - 1 / 64 - 4 / (64 * 256)))
    assert lora.weights - int8.weights == pytest.approx(blocks * 1.0)


def test_bytes_per_parameter_follow_the_precision_policy():
    shape, p = model_shape(LLAMA_7B), param_counts(model_shape(LLAMA_7B)).total
    full = estimate(shape, AdapterConfig(method="full"), BF16, "single")
    assert (full.weights, full.grads, full.optimizer) == (6 * p, 4 * p, 8 * p)   # fp32 + autocast copy, fp32, AdamW
    fp32 = estimate(shape, AdapterConfig(method="full"), BF16.model_copy(update={"precision": "fp32"}), "single")
    assert fp32.weights == 4 * p and fp32.activations > 1.9 * full.activations
    lora = estimate(shape, AdapterConfig(), BF16, "single")
    assert lora.weights == pytest.approx(2 * p + 6 * trainable_params(shape, AdapterConfig()))


def test_activations_grow_with_tokens_and_eager_attention_scores():
    shape = model_shape(LLAMA_7B)
    small = estimate(shape, AdapterConfig(), BF16, "single")
    big = estimate(shape, AdapterConfig(), BF16.model_copy(update={"micro_batch": 4}), "single")
    assert 1.9 * small.activations < big.activations < 2.1 * small.activations
    eager = estimate(shape, AdapterConfig(), BF16, "single", eager=True)
    assert eager.activations - small.activations == 5 * 32 * 1024 * 2048 * 32   # 5·H·s per token, per block
    dpo = estimate(shape, AdapterConfig(), BF16, "single", kind="dpo")         # a pair is two rows
    assert 1.9 * small.activations < dpo.activations < 2.1 * small.activations


def test_a_7b_llama_needs_qlora_on_24_gib_or_sharding():
    shape = model_shape(LLAMA_7B)
    assert param_counts(shape).total == 6_738_415_616   # Llama-2-7B's published count
    full, lora = plan(shape, AdapterConfig(method="full"), BF16), plan(shape, AdapterConfig(), BF16)
    one = {e.method: e for e in (*full.estimates, *lora.estimates) if e.strategy == "single"}
    assert 110 < one["full"].total / GIB < 130 and not one["full"].fits(80)
    assert not one["lora"].fits(24) and one["lora"].fits(40)
    assert one["qlora-nf4"].fits(24) and one["qlora-nf4"].total < one["lora"].total - 8 * GIB
    zero3_4 = next(e for e in full.estimates if (e.method, e.strategy, e.devices) == ("full", "zero3", 4))
    assert zero3_4.fits(80) and not zero3_4.fits(24)
    assert fitting(full, "full", 24) == "nothing up to 8 devices"
    assert fitting(full, "full", 80) == "zero3/fsdp x2, zero2 x4"
    assert fitting(full, "qlora-nf4", 24) == "any strategy"


def test_the_table_has_a_row_per_strategy_and_device_count_and_a_verdict_per_device_size():
    p = plan(model_shape(LLAMA_7B), AdapterConfig(method="full"), BF16, title="7B")
    text = format_plan(p)
    rows = [line.split() for line in text.splitlines() if line.split()[0] in ("full", "qlora-nf4")]
    assert [(r[0], r[1], int(r[2])) for r in rows[:10]] == \
        [("full", "single", 1)] + [("full", s, n) for n in (2, 4, 8) for s in ("ddp", "zero2", "zero3/fsdp")]
    assert len(rows) == 20 and {len(r) for r in rows} == {8}
    first = p.estimates[0]
    assert rows[0][3:] == [f"{x / GIB:.2f}" for x in (first.weights, first.grads, first.optimizer,
                                                      first.activations, first.total)]
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("fits")] == \
        ["fits 16 GiB", "fits 24 GiB", "fits 40 GiB", "fits 80 GiB"]
    assert set(SHARDED) == {"single", "ddp", "zero2", "zero3"}


def test_a_quantized_stage_is_compared_with_its_unquantized_adapter():
    p = plan(model_shape(LLAMA_7B), AdapterConfig(method="dora", quantize="nf4"), BF16)
    assert list(dict.fromkeys(e.method for e in p.estimates)) == ["qdora-nf4", "dora"]


@pytest.mark.parametrize("fixture,stage_names", [("tiny.yaml", ["dapt", "sft"]), ("tiny-dpo.yaml", ["sft", "dpo"])])
def test_dry_run_prints_the_plan_and_writes_no_run(fixture, stage_names, tmp_path, capsys, monkeypatch):
    config = tmp_path / fixture
    config.write_text((FIXTURES / fixture).read_text())   # its data files are not next to it: never read
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(config), "--dry-run", "--set", "stages[0].train.micro_batch=3"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [fixture]   # no runs/, no data/
    stages = [line for line in out.splitlines() if line.startswith("stage ")]
    assert [line.split()[1] for line in stages] == stage_names
    assert "tiny-llama, lora r=4 on all-linear" in stages[0] and "micro_batch 3 x block_size" in stages[0]
    assert out.count("weights   grads optimizer activations") == 2 and out.count("fits 16 GiB: lora: any strategy") == 2
    assert out.count("zero3/fsdp") == 2 * 2 * 3 and "qlora-nf4" in out   # (lora, qlora) x (2, 4, 8 devices)


def test_dry_run_reports_a_config_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text((FIXTURES / "tiny.yaml").read_text().replace("micro_batch: 2", "micro_batch: 0", 1))
    assert main(["train", str(config), "--dry-run"]) == 2
    assert "micro_batch: must be > 0" in capsys.readouterr().err
