"""The dpo stage's loss: TRL's DPOTrainer as the oracle (sigmoid, ipo), and the invariants (only LoRA weights
change, prompt tokens carry no loss, a short run raises the reward margin)."""
import copy
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from quill import models
from quill.config import AdapterConfig, DPOConfig
from quill.data.pack import IGNORE_INDEX
from quill.data.pairs import encode_pairs
from quill.train.batches import collate_pairs
from quill.train.dpo import DPOLoss, dpo_loss, reference_logps
from quill.train.loss import CausalLMLoss

RECORDS = [
    {"prompt": [{"role": "user", "content": "Write a short poem about the sea."}],
     "chosen": "The sea is wide,\nit keeps the tide.", "rejected": "Water. Lots of it, I suppose."},
    {"prompt": [{"role": "system", "content": "You are a poet."}, {"role": "user", "content": "The moon?"}],
     "chosen": "O moon, so white,\nyou hold the night.", "rejected": "It is a rock in space."},
    {"prompt": [{"role": "user", "content": "A poem about a sparrow, please, in two lines."}],
     "chosen": "A sparrow sings\nof little things.", "rejected": "Birds are small animals that can often fly."},
]


def policy(tiny, seed=0):
    """(LoRA model with random non-zero B, so policy != reference; tokenizer; template)."""
    model, tok, tpl = tiny
    m = models.apply_adapter(copy.deepcopy(model), AdapterConfig(r=4, alpha=8, dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m, tok, tpl


def pair_batch(model, tok, tpl, records=RECORDS):
    enc = encode_pairs(records, tok, tpl, max_length=64)
    with model.disable_adapter():  # the reference: the model as it entered the stage (adapter off)
        reference_logps(model, enc, tok.eos_token_id, 2, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    return enc, collate_pairs(enc.sequences, tok.eos_token_id)


def quill_step(model, batch, cfg):
    module = DPOLoss(model.eval(), cfg)  # the model in eval mode: GPT-2's dropout off on both sides
    s, n = module(**batch)
    (s / n).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return (s / n).item(), module.pop_stats(), grads


def trl_step(model, batch, beta, loss_type):
    """TRL 1.16's own DPOTrainer._compute_loss, on the same weights and tokens (a peft model, no ref_model:
    TRL disables the adapter for the reference, as quill's reference is)."""
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head
    trl_model = copy.deepcopy(model)
    add_fused_lm_head(trl_model.get_base_model(), outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    trl_model.eval()
    acc = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x,
                          unwrap_model=lambda m: m, autocast=lambda: torch.autocast("cpu", enabled=False))
    fake = SimpleNamespace(model=trl_model, ref_model=None, accelerator=acc, aux_loss_enabled=False,
                           precompute_ref_logps=False, ld_alpha=None, f_divergence_type="reverse_kl",
                           loss_types=[loss_type], loss_weights=[1.0], beta=beta, use_weighting=False,
                           label_smoothing=0.0, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                           _total_train_tokens=0, _tp_size=1, args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    labels = batch["labels"]
    lengths = (batch["position_ids"] == torch.arange(labels.shape[1])).cumprod(1).sum(1)  # real tokens per row
    attention = (torch.arange(labels.shape[1])[None, :] < lengths[:, None]).long()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": attention,
              "completion_mask": (labels != IGNORE_INDEX).long()}
    loss = DPOTrainer._compute_loss(fake, trl_model, inputs, False)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in trl_model.named_parameters() if p.grad is not None}
    return loss.item(), {k: v[-1] for k, v in fake._metrics["eval"].items()}, grads


@pytest.mark.parametrize("loss_type,beta,tiny", [("sigmoid", 0.1, "tiny_llama"), ("ipo", 0.5, "tiny_llama"),
                                                 ("sigmoid", 0.3, "tiny_gpt2")])
def test_loss_rewards_and_gradients_equal_trl(request, loss_type, beta, tiny):
    pytest.importorskip("trl", reason="trl (a development-only oracle) is not installed")
    model, tok, tpl = policy(request.getfixturevalue(tiny))
    _, batch = pair_batch(model, tok, tpl)
    loss, stats, grads = quill_step(model, batch, DPOConfig(beta=beta, loss=loss_type))
    t_loss, t_stats, t_grads = trl_step(model, batch, beta, loss_type)
    assert loss == pytest.approx(t_loss, rel=1e-5, abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected"):
        assert stats[key] == pytest.approx(t_stats[key], rel=1e-4, abs=1e-5), key
    assert stats["rewards/margins"] != 0  # the policy differs from the reference: a real test
    assert set(grads) == set(t_grads) and grads
    for k in grads:
        # fp32 sums in another order: equal up to rounding, relative to the gradient's scale
        torch.testing.assert_close(grads[k], t_grads[k], rtol=1e-3, atol=1e-4 * float(t_grads[k].abs().max()))


def test_dpo_loss_formulas_by_hand():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-3.0, -5.0, -4.0, -4.5))
    n_c, n_r = torch.tensor([2]), torch.tensor([4])
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, n_c, n_r, beta=0.1, loss="sigmoid")
    assert float(losses) == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.1 * (1.0 + 0.5))).item())
    assert (float(cr), float(rj)) == pytest.approx((0.1, -0.05))
    losses, _, _ = dpo_loss(pc, pr, rc, rr, n_c, n_r, beta=0.5, loss="ipo")
    assert float(losses) == pytest.approx((1.0 / 2 + 0.5 / 4 - 1 / (2 * 0.5)) ** 2)


def test_sft_weight_adds_the_chosen_answers_mean_nll(tiny_llama):
    model, tok, tpl = policy(tiny_llama)
    _, batch = pair_batch(model, tok, tpl)
    with torch.no_grad():
        plain = DPOLoss(model, DPOConfig())(**batch)[0]
        rpo = DPOLoss(model, DPOConfig(sft_weight=0.5))(**batch)[0]
        nll, tokens = CausalLMLoss(model).row_losses(batch["input_ids"], batch["labels"], batch["position_ids"])
    n = len(RECORDS)
    assert float(rpo - plain) == pytest.approx(float(0.5 * (nll[:n] / tokens[:n]).sum()), rel=1e-5)


def test_prompt_tokens_carry_no_loss(tiny_llama):
    """Labels are -100 on every prompt token of both rows, the prompt is the same ids on both sides, and
    changing a prompt-position label does nothing (it is never read)."""
    model, tok, tpl = policy(tiny_llama)
    enc, batch = pair_batch(model, tok, tpl)
    for rec, pair in zip(RECORDS, enc.sequences):
        p_ids = tpl.encode_prompt(tok, rec["prompt"])
        for row in (pair.chosen, pair.rejected):
            assert row.input_ids[:len(p_ids)] == p_ids
            assert all(x == IGNORE_INDEX for x in row.labels[:len(p_ids)])
            assert row.labels[-1] == tpl.end_of_turn_id(tok)  # the end of the answer is part of the preference
    # the outputs at positions whose target is a prompt token (or padding) are never read: scaling them
    # (a forward hook on the backbone) leaves the loss as it was
    hf = model.get_base_model()
    unread = torch.nn.functional.pad(batch["labels"][:, 1:] == IGNORE_INDEX, (0, 1), value=True)[..., None]
    with torch.no_grad():
        before = DPOLoss(model, DPOConfig())(**batch)[0]
        hook = hf.model.register_forward_hook(lambda _m, _i, out: out.__class__(
            last_hidden_state=torch.where(unread, out.last_hidden_state * 7.0, out.last_hidden_state)))
        try:
            scaled = DPOLoss(model, DPOConfig())(**batch)[0]
        finally:
            hook.remove()
        hook = hf.model.register_forward_hook(lambda _m, _i, out: out.__class__(
            last_hidden_state=torch.where(unread, out.last_hidden_state, out.last_hidden_state * 7.0)))
        try:
            answers_scaled = DPOLoss(model, DPOConfig())(**batch)[0]
        finally:
            hook.remove()
    assert float(scaled) == pytest.approx(float(before), rel=1e-6)
    assert float(answers_scaled) != pytest.approx(float(before), rel=1e-3)  # the hook does reach the loss


def test_only_lora_weights_change_and_the_margin_rises(tiny_llama):
    """A short run on a handful of pairs: base weights untouched, reward margin up, accuracy > 0.5."""
    model, tok, tpl = tiny_llama
    model = models.apply_adapter(copy.deepcopy(model), AdapterConfig(r=4, alpha=8, dropout=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    enc = encode_pairs(RECORDS, tok, tpl, max_length=64)
    reference_logps(model, enc, tok.eos_token_id, 3, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    batch = collate_pairs(enc.sequences, tok.eos_token_id)
    module = DPOLoss(model.train(), DPOConfig(beta=0.5))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    margins = []
    for _ in range(8):
        s, n = module(**batch)
        (s / n).backward()
        opt.step()
        opt.zero_grad()
        margins.append(module.pop_stats())
    assert margins[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the start
    with torch.no_grad():
        module(**batch)
    last = module.pop_stats()
    assert last["rewards/margins"] > margins[1]["rewards/margins"] > 0
    assert last["rewards/accuracies"] > 0.5
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        assert torch.equal(p, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_B" in n)
