"""The documented FLOPs of a training token (train/flops.py) against torch's own FLOP counter on a real quill
step: the fused loss, LoRA or full fine-tuning, Llama (GQA, tied) and GPT-2 (Conv1D, learned positions)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.utils.flop_counter as fc
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from quill.config import AdapterConfig
from quill.models import apply_adapter
from quill.train.flops import FUSED_ATTENTION_BACKWARD, MATH_ATTENTION_BACKWARD, token_flops
from quill.train.loss import CausalLMLoss
from quill.train.memory import model_shape

aten = torch.ops.aten
# torch counts the CUDA attention kernels; the CPU one gets the same formulas (forward: QK^T and PV over the
# whole block; backward: the scores recomputed, then four products)
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v),
}
CONFIGS = {
    "llama": LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "gpt2": GPT2Config(vocab_size=320, n_embd=64, n_layer=2, n_head=4, n_positions=64),
}
ADAPTERS = {"lora": AdapterConfig(r=4), "lora-attention": AdapterConfig(r=8, targets="attention"),
            "full": AdapterConfig(method="full")}


def counted_step(name: str, adapter: AdapterConfig, batch: int = 2, seq: int = 32) -> dict[str, int]:
    torch.manual_seed(0)
    config = copy.deepcopy(CONFIGS[name])
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    if adapter.trains_adapter:
        model = apply_adapter(model, adapter)
    loss_fn = CausalLMLoss(model)
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    with fc.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        loss, _ = loss_fn(ids, ids, torch.arange(seq).repeat(batch, 1))
        loss.backward()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_every_term_equals_what_the_step_runs(name, kind):
    batch, seq = 2, 32
    counts = counted_step(name, ADAPTERS[kind], batch, seq)
    math_path = "aten.bmm" in counts         # SDPA's math fallback: batched products, the scores kept
    flops = token_flops(model_shape(CONFIGS[name]), ADAPTERS[kind], seq, target_share=(seq - 1) / seq,
                        attention_backward=MATH_ATTENTION_BACKWARD if math_path else FUSED_ATTENTION_BACKWARD)
    tokens = batch * seq
    products = counts.pop("aten.mm", 0) + counts.pop("aten.addmm", 0)
    assert products == tokens * (flops.linear_forward + flops.head_forward + flops.linear_backward
                                 + flops.head_backward + flops.adapter)
    if math_path:
        assert counts.pop("aten.bmm") == tokens * (flops.attention_forward + flops.attention_backward)
    else:
        assert counts.pop("aten._scaled_dot_product_flash_attention_for_cpu") == tokens * flops.attention_forward
        assert counts.pop("aten._scaled_dot_product_flash_attention_for_cpu_backward") == \
            tokens * flops.attention_backward
    assert counts == {}                      # nothing else was counted


def test_smollm2_135m_lora_token_costs_what_the_issue_estimated():
    """SmolLM2-135M's shape, LoRA r16 all-linear, blocks of 512: ~590 MFLOP a token by issue 17's estimate."""
    shape = model_shape(dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                             num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True))
    flops = token_flops(shape, AdapterConfig(r=16), 512, target_share=511 / 512)
    assert flops.linear_forward + flops.head_forward == pytest.approx(269e6, rel=0.01)
    assert 560e6 < flops.total < 700e6 and flops.adapter == pytest.approx(29.3e6, rel=0.01)
