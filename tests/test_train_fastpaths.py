"""The training fast paths: the fused vocabulary projection + cross-entropy, compiled blocks, flex attention
choice. Each must compute what the plain path computes."""
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from quill.data.pack import Example, pack_examples
from quill.train.batches import collate
from quill.train.fastpaths import (_TrainingOnly, compile_blocks, packed_attention, repeated_blocks,
                                   should_compile, uncompile_blocks)
from quill.train.loss import CausalLMLoss, linear_cross_entropy


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("train_head", [False, True])
@pytest.mark.parametrize("pad_vocab", [1, 64])  # 64: the GPU default, 50 rows padded to 64
def test_linear_cross_entropy_matches_the_plain_loss_and_gradients(bias, train_head, pad_vocab):
    torch.manual_seed(1)
    h = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=train_head)
    b = torch.randn(50, dtype=torch.float64, requires_grad=True) if bias else None
    t = torch.randint(0, 50, (300,))
    wants = [x for x in (h, w, b) if x is not None and x.requires_grad]
    ref = F.cross_entropy(F.linear(h, w, b), t, reduction="sum")
    mine = linear_cross_entropy(h, w, b, t, chunk=64, pad_vocab=pad_vocab)  # 300 rows: four full chunks and a short one
    torch.testing.assert_close(mine.double(), ref, rtol=1e-6, atol=1e-4)
    for got, want in zip(torch.autograd.grad(mine * 1.7, wants), torch.autograd.grad(ref * 1.7, wants)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_linear_cross_entropy_without_gradients_gives_the_same_loss_and_skips_the_gradient_pass(monkeypatch):
    """Under no_grad (evaluation) only the loss is computed: same value, and no (softmax - one-hot) @ W."""
    torch.manual_seed(2)
    h, w, t = torch.randn(130, 16, dtype=torch.float64), torch.randn(50, 16, dtype=torch.float64), torch.randint(0, 50, (130,))
    ref = F.cross_entropy(F.linear(h, w), t, reduction="sum")
    calls = []
    real_exp = torch.Tensor.exp_
    monkeypatch.setattr(torch.Tensor, "exp_", lambda self: calls.append(1) or real_exp(self))
    with torch.no_grad():
        mine = linear_cross_entropy(h.requires_grad_(), w, None, t, chunk=64)
    torch.testing.assert_close(mine.double(), ref, rtol=1e-6, atol=1e-4)
    assert calls == []
    linear_cross_entropy(h, w, None, t, chunk=64)
    assert len(calls) == 3      # with gradients: the softmax of each of the three chunks


def test_linear_cross_entropy_with_no_targets_is_zero_and_connected():
    h = torch.randn(0, 8, requires_grad=True)
    loss = linear_cross_entropy(h, torch.randn(10, 8), None, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and h.grad is not None


def test_compile_choice():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert should_compile("auto", gpu, 1) and should_compile("on", cpu, 1)
    assert not should_compile("off", gpu, 10_000) and not should_compile("auto", cpu, 3)


def test_compiled_blocks_train_like_eager_and_are_removed_after():
    model = tiny_llama()
    blocks = repeated_blocks(model)
    assert len(blocks) == 2 and type(blocks[0]).__name__ == "LlamaDecoderLayer"
    batch = collate(pack_examples([Example(list(range(3, 3 + n)), list(range(3, 3 + n))) for n in (20, 9, 30)],
                                  32, seed=0), pad_id=0)
    loss = CausalLMLoss(model)

    def grads():
        model.zero_grad()
        s, n = loss(**batch)
        (s / n).backward()
        return float(s.detach()), [p.grad.clone() for p in model.parameters()]

    eager_loss, eager_grads = grads()
    assert compile_blocks(model) == 2 and isinstance(blocks[0].forward, _TrainingOnly)
    compiled_loss, compiled_grads = grads()
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    uncompile_blocks(model)
    assert not isinstance(blocks[0].forward, _TrainingOnly)


def test_packed_attention_choice_per_device_and_model():
    llama = tiny_llama()
    assert packed_attention(llama, "sdpa", torch.device("cuda"), True) is None  # the user's choice stands
    assert packed_attention(llama, "auto", torch.device("cpu"), True) is None  # flex has no CPU backward
    assert packed_attention(llama, "auto", torch.device("cuda"), False) is None  # unpacked: causal SDPA is best
    assert packed_attention(llama, "auto", torch.device("cuda"), True) == "sdpa"
    assert llama.config._attn_implementation == "flex_attention"
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    assert packed_attention(gpt2, "auto", torch.device("cuda"), True) is None  # transformers has no flex GPT-2
    assert gpt2.config._attn_implementation == "sdpa"


def test_flex_attention_keeps_packed_examples_apart():
    model = tiny_llama().eval()
    ids = torch.randint(0, 97, (2, 60))
    pos = torch.cat([torch.arange(n) for n in (25, 15, 20)]).repeat(2, 1)
    with torch.no_grad():
        alone = torch.cat([model(input_ids=ids[:, a:b], use_cache=False).logits
                           for a, b in ((0, 25), (25, 40), (40, 60))], 1)
        model.set_attn_implementation("flex_attention")
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-5)
