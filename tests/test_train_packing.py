"""Packing and the loss: packed poems don't see each other; only target tokens carry loss; accumulation
normalises by tokens. Tiny random models built from configs, no tokenizer needed."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from quill.data.pack import IGNORE_INDEX, Example, make_batches, pack_examples, unpacked
from quill.train.batches import collate
from quill.train.loss import CausalLMLoss


def tiny(arch: str):
    torch.manual_seed(0)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=128)
        model = GPT2LMHeadModel(cfg)
    return model.eval()


def ex(*ids):
    return Example(list(ids), list(ids))


def test_packing_keeps_every_token_and_respects_block_size():
    examples = [ex(*range(1, n + 1)) for n in (5, 17, 3, 30, 9, 12, 2, 40)]
    blocks = pack_examples(examples, block_size=32, seed=0)
    assert all(len(b) <= 32 for b in blocks)
    assert sum(len(b) for b in blocks) == sum(len(e) for e in examples)  # the 40-token one is split, not lost
    for b in blocks:  # positions restart at each example; its first token is never a target
        starts = [i for i, p in enumerate(b.position_ids) if p == 0]
        assert starts[0] == 0
        assert all(b.labels[i] == IGNORE_INDEX for i in starts)
    assert len(blocks) <= 5  # 118 tokens in blocks of 32: best-fit wastes little


def test_packing_is_deterministic_for_a_seed():
    examples = [ex(*range(1, n + 1)) for n in range(2, 30)]
    a = [b.input_ids for b in pack_examples(examples, 40, seed=3)]
    assert a == [b.input_ids for b in pack_examples(examples, 40, seed=3)]


def test_length_grouped_batches_cover_every_row_once():
    seqs = unpacked([ex(*range(1, n + 1)) for n in range(2, 50)], 64)
    batches = make_batches(seqs, 4, seed=0, shuffle=True, group_by_length=True)
    assert sorted(i for b in batches for i in b) == list(range(len(seqs)))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_examples_do_not_attend_to_each_other(arch, attn):
    model = tiny(arch)
    model.config._attn_implementation = attn
    a, b = [5, 6, 7, 8, 9], [11, 12, 13, 14]
    block = collate(pack_examples([ex(*a), ex(*b)], 16, seed=0), pad_id=0)
    with torch.no_grad():
        packed = model(input_ids=block["input_ids"], position_ids=block["position_ids"],
                       attention_mask=None, use_cache=False).logits[0]
        alone = {tuple(x): model(input_ids=torch.tensor([x]), use_cache=False).logits[0] for x in (a, b)}
    ids = block["input_ids"][0].tolist()
    for doc in (a, b):
        start = next(i for i in range(len(ids)) if ids[i:i + len(doc)] == doc)
        torch.testing.assert_close(packed[start:start + len(doc)], alone[tuple(doc)], atol=1e-5, rtol=1e-4)


def test_collate_pads_to_a_fixed_shape_with_rows_that_carry_no_loss():
    """Compiled training pads the short last micro-batch to the others' shape: same loss, no recompiling."""
    model = tiny("llama")
    wrapper = CausalLMLoss(model)
    seqs = pack_examples([ex(5, 6, 7, 8, 9), ex(11, 12, 13)], 16, seed=0)
    plain, padded = collate(seqs, pad_id=0), collate(seqs, pad_id=0, rows=3, width=16)
    assert tuple(padded["input_ids"].shape) == (3, 16)
    assert (padded["labels"][len(seqs):] == IGNORE_INDEX).all()
    assert padded["position_ids"][len(seqs):].tolist() == [list(range(16))] * (3 - len(seqs))
    with torch.no_grad():
        (s1, n1), (s2, n2) = wrapper(**plain), wrapper(**padded)
    assert n1 == n2 and torch.allclose(s1, s2, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_loss_matches_transformers_and_ignores_masked_tokens(arch):
    model = tiny(arch)
    wrapper = CausalLMLoss(model)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]])
    labels = ids.clone()
    labels[0, :4] = IGNORE_INDEX  # a "prompt" of 4 tokens
    pos = torch.arange(8)[None]
    with torch.no_grad():
        s, n = wrapper(ids, labels, pos)
        ref = model(input_ids=ids, labels=labels).loss
    assert n.item() == 4
    torch.testing.assert_close(s / n, ref, atol=1e-5, rtol=1e-5)
    # changing the masked tokens' labels changes nothing; their ids still condition the targets
    labels2 = labels.clone()
    labels2[0, 1] = IGNORE_INDEX
    with torch.no_grad():
        s2, n2 = wrapper(ids, labels2, pos)
    assert (s2, n2) == (s, n)


def test_no_target_tokens_gives_zero_loss_and_a_graph():
    wrapper = CausalLMLoss(tiny("llama")).train()
    ids = torch.tensor([[3, 4, 5]])
    s, n = wrapper(ids, torch.full_like(ids, IGNORE_INDEX), torch.arange(3)[None])
    assert n.item() == 0 and s.item() == 0.0
    s.backward()  # must not raise: DDP needs every process to run backward


def test_accumulation_normalises_by_tokens_not_micro_batches():
    """Gradient of two micro-batches (4 and 1 target tokens) == gradient of the same rows in one batch."""
    model = tiny("llama").train()
    wrapper = CausalLMLoss(model)
    rows = unpacked([ex(1, 2, 3, 4, 5), ex(6, 7)], 16)
    params = [p for p in model.parameters()]

    def grads(micro_batches):
        model.zero_grad()
        n_total = sum(r.loss_tokens for mb in micro_batches for r in mb)
        for mb in micro_batches:
            s, _ = wrapper(**collate(mb, 0))
            (s / n_total).backward()
        return [p.grad.clone() for p in params]

    joint, split = grads([rows]), grads([[rows[0]], [rows[1]]])
    for g1, g2 in zip(joint, split):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)
