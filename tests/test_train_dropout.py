"""Hashed LoRA dropout (compiled CPU training): the mask's statistics, exact gradients, and the swap back."""
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from quill.train.dropout import DroppedLoraA, fuse_lora_dropout, hashed_dropout, keep_mask, unfuse_lora_dropout
from quill.train.fastpaths import training_fast_paths


def test_mask_drops_p_of_the_elements_independently_per_seed():
    shape, p = torch.Size([1000, 1000]), 0.05
    a = keep_mask(shape, torch.tensor([11, 22]), p, torch.device("cpu"))
    b = keep_mask(shape, torch.tensor([12, 22]), p, torch.device("cpu"))
    assert torch.equal(a, keep_mask(shape, torch.tensor([11, 22]), p, torch.device("cpu")))  # a function of the seed
    dropped_a, dropped_b = (~a).float().mean().item(), (~b).float().mean().item()
    assert dropped_a == pytest.approx(p, abs=0.001) and dropped_b == pytest.approx(p, abs=0.001)
    # neighbouring seeds give unrelated masks: both dropped about p² of the time, not p
    assert ((~a) & (~b)).float().mean().item() == pytest.approx(p * p, abs=0.0005)
    # no structure along rows or columns: every row and column loses about p
    assert (~a).float().mean(0).std().item() < 0.02 and (~a).float().mean(1).std().item() < 0.02


def _unsigned_hash_mask(shape, seed, p):
    """The mask's definition on unsigned 32-bit integers, computed in int64 where nothing wraps."""
    m32 = 0xFFFFFFFF

    def mix(h):
        h = ((h >> 16) ^ h) * 0x45D9F3B & m32
        h = ((h >> 16) ^ h) * 0x45D9F3B & m32
        return (h >> 16) ^ h
    idx = torch.arange(shape.numel(), dtype=torch.int64).view(shape)
    h = mix(mix((idx + seed[0]) & m32) ^ seed[1])
    return (h & ((1 << 24) - 1)) >= int(round(p * (1 << 24)))


@pytest.mark.parametrize("seed", [(11, 22), (2**31 - 2, 2**31 - 3), (2**31 - 10, 5)])  # the last two wrap int32
def test_int32_mask_is_the_unsigned_32_bit_hash(seed):
    shape, p = torch.Size([257, 300]), 0.05
    seed = torch.tensor(seed)
    want = _unsigned_hash_mask(shape, seed, p)
    assert torch.equal(keep_mask(shape, seed, p, torch.device("cpu")), want)
    compiled = torch.compile(keep_mask)  # inductor's vectorised int32 loop wraps the same way
    assert torch.equal(compiled(shape, seed, p, torch.device("cpu")), want)


def test_kept_elements_are_scaled_and_dropped_ones_are_zero():
    x = torch.randn(64, 32)
    y = hashed_dropout(x, torch.tensor([3, 4]), 0.25)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    assert 0.15 < 1 - kept.float().mean().item() < 0.35


def test_compiled_lora_a_matches_eager_with_the_same_mask(monkeypatch):
    import torch._inductor.config as inductor
    monkeypatch.setattr(inductor, "fallback_random", True)  # as compile_blocks sets it: ATen draws the seed
    torch.manual_seed(0)
    linear, p = nn.Linear(32, 4, bias=False), 0.3
    x = torch.randn(2, 16, 32, requires_grad=True)
    fn = torch.compile(DroppedLoraA(linear, p))
    torch.manual_seed(7)
    out = fn(x)
    (out * torch.arange(4.0)).sum().backward()
    grads = x.grad.clone(), linear.weight.grad.clone()
    x.grad, linear.weight.grad = None, None
    torch.manual_seed(7)  # the same draw gives the same seed, hence the same mask
    seed = torch.randint(0, 2**31 - 1, (2,))
    ref = F.linear(hashed_dropout(x, seed, p), linear.weight)
    (ref * torch.arange(4.0)).sum().backward()
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(grads[0], x.grad, atol=1e-6) and torch.allclose(grads[1], linear.weight.grad, atol=1e-5)
    assert (x.grad == 0).any()  # dropped inputs get no gradient


def test_eval_is_the_plain_linear_and_eager_training_uses_atens_dropout():
    linear = nn.Linear(8, 2)
    fn, x = DroppedLoraA(linear, 0.5), torch.randn(4, 8)
    fn.eval()
    assert torch.equal(fn(x), linear(x))
    fn.train()
    torch.manual_seed(3)
    out = fn(x)
    torch.manual_seed(3)
    assert torch.equal(out, F.linear(F.dropout(x, 0.5, training=True), linear.weight, linear.bias))


def tiny_lora(dropout: float):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      vocab_size=128)
    return get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                            target_modules="all-linear"))


def test_fuse_swaps_every_dropout_and_unfuse_restores_the_modules():
    model = tiny_lora(0.1)
    keys = list(model.state_dict())
    fused = fuse_lora_dropout(model)
    assert len(fused) == 14  # 7 linear layers × 2 blocks
    assert list(model.state_dict()) == keys  # the adapter saves as before
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.lora_dropout["default"], nn.Identity)
    assert isinstance(layer.lora_A["default"], DroppedLoraA)
    weight = layer.lora_A["default"].weight
    unfuse_lora_dropout(fused)
    assert isinstance(layer.lora_dropout["default"], nn.Dropout) and type(layer.lora_A["default"]) is nn.Linear
    assert layer.lora_A["default"].weight is weight  # one Parameter throughout: the optimizer's
    assert fuse_lora_dropout(tiny_lora(0.0)) == []  # nothing to do without dropout


def test_compiled_cpu_training_uses_it_and_learns():
    model = tiny_lora(0.1)
    ids = torch.randint(0, 128, (2, 24))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    with training_fast_paths(model, compile_setting="on", attention="auto", device=torch.device("cpu"),
                             packing=True, micro_batches=1) as on:
        assert on["hashed_lora_dropout"] == 14
        losses = []
        for _ in range(8):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    assert losses[-1] < losses[0]
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    assert isinstance(layer.lora_dropout["default"], nn.Dropout)
