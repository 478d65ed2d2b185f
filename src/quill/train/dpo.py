"""Direct Preference Optimization: the loss of a dpo stage, and the frozen reference's log-probs.

A batch holds n pairs as 2n rows (``batches.collate_pairs``: chosen rows, then rejected rows), run in one
forward pass. A row's log-prob is the sum over its answer tokens (labels != -100: the prompt carries none).
With policy log-probs pc, pr and the reference's rc, rr, the rewards are ``beta * (pc - rc)`` and
``beta * (pr - rr)``, and a pair's loss (``dpo.loss``):

- ``sigmoid`` (DPO): ``-logsigmoid(beta * ((pc - rc) - (pr - rr)))``;
- ``ipo`` (IPO, as TRL computes it): the log-ratios divided by each answer's token count, then
  ``((c_avg - r_avg) - 1 / (2 * beta)) ** 2``;
- plus ``sft_weight`` times the chosen answer's mean token NLL (RPO), when set.

The reference is the model as it entered the stage. It is frozen, so its log-probs are computed once, before
the first step, for every pair (:func:`reference_logps`) and ride along in the batches: the stage costs one
forward pass per pair and step, not two. Computed before any step, they are the entering model's whether the
stage starts a fresh LoRA adapter (B = 0: the same function as the merged weights) or continues one.

They are stored in the run folder (``data/<stage>/reference_logps.json``, keyed by a hash of the tokenized pairs:
:func:`cached_reference_logps`), so a resumed stage reads them instead of running the reference again.

The module returns (sum of the pairs' losses, pairs), so the loop's accumulation averages over pairs, and
keeps per-step statistics (:meth:`DPOLoss.pop_stats`) that the loop logs: rewards/margins,
rewards/accuracies, rewards/chosen, rewards/rejected, logps/chosen, logps/rejected.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from quill.files import atomic_write_json, read_json
from quill.train.batches import collate_pairs
from quill.train.loss import CausalLMLoss

STATS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
         "logps/rejected")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
             beta: float, loss: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards) from summed answer log-probs (see the module
    docstring); the rewards are detached, as TRL reports them."""
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif loss == "ipo":
        delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class DPOLoss(CausalLMLoss):
    """The loop's loss module for a dpo stage: ``forward(**collate_pairs(...))`` -> (loss sum, pairs)."""

    def __init__(self, model: torch.nn.Module, cfg):  # cfg: quill.config.DPOConfig
        super().__init__(model)
        self.cfg = cfg
        self._stats: dict[str, torch.Tensor] = {}

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                ref_logps: torch.Tensor, attention_mask: torch.Tensor | None = None):
        nll, tokens = self.row_losses(input_ids, labels, position_ids, attention_mask)
        n = nll.shape[0] // 2
        logps = -nll
        ref = ref_logps.to(logps.dtype)
        losses, chosen_rewards, rejected_rewards = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], tokens[:n],
                                                            tokens[n:], self.cfg.beta, self.cfg.loss)
        if self.cfg.sft_weight:
            losses = losses + self.cfg.sft_weight * nll[:n] / tokens[:n].clamp(min=1)
        real = (tokens[:n] > 0) & (tokens[n:] > 0)  # padding pairs, and an idle process's batch, count 0
        if self.training:
            self._add_stats(real, chosen_rewards, rejected_rewards, logps[:n].detach(), logps[n:].detach())
        return torch.where(real, losses, torch.zeros_like(losses)).sum(), real.sum()

    def _add_stats(self, real, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> None:
        values = (chosen_rewards, rejected_rewards, chosen_rewards - rejected_rewards,
                  (chosen_rewards > rejected_rewards).float(), chosen_logps, rejected_logps)
        for name, v in zip(("pairs", *STATS), (real.float(), *values)):
            s = torch.where(real, v.float(), torch.zeros_like(v, dtype=torch.float32)).sum()
            self._stats[name] = self._stats.get(name, 0) + s

    def pop_stats(self, accelerator=None) -> dict[str, float]:
        """Means over the pairs since the last call (all processes' when an accelerator is given)."""
        stats, self._stats = self._stats, {}
        if not stats:
            return {}
        names = ["pairs", *STATS]
        sums = torch.stack([torch.as_tensor(stats[k], dtype=torch.float32) for k in names])
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), "sum")
        pairs = max(float(sums[0]), 1.0)
        return {k: float(v) / pairs for k, v in zip(STATS, sums[1:].tolist())}


@torch.no_grad()
def reference_logps(model: torch.nn.Module, encoded, pad_id: int, micro_batch: int, device, autocast,
                    desc: str | None = None) -> None:
    """Fill every pair's ``ref_chosen`` / ``ref_rejected``: the model's summed answer log-probs as it is now
    (in eval mode: no dropout), micro-batch by micro-batch; ``desc``: show a progress bar under that name."""
    module = CausalLMLoss(model)
    was_training = model.training
    model.eval()
    pairs = encoded.sequences
    with tqdm(total=len(pairs), desc=desc, unit="pair", disable=desc is None, leave=False) as bar:
        for start in range(0, len(pairs), micro_batch):
            chunk = pairs[start:start + micro_batch]
            batch = collate_pairs(chunk, pad_id)
            batch.pop("ref_logps")
            with autocast():
                nll, _ = module.row_losses(**{k: v.to(device) for k, v in batch.items()})
            values = (-nll.float()).tolist()
            for i, pair in enumerate(chunk):
                pair.ref_chosen, pair.ref_rejected = values[i], values[len(chunk) + i]
            bar.update(len(chunk))
    model.train(was_training)


def pairs_fingerprint(encs: dict) -> str:
    """sha256 of every split's pairs as tokenized (both rows' ids and labels): what the reference saw."""
    h = hashlib.sha256(b"quill-dpo-reference-1")
    for name in sorted(encs):
        h.update(f"|{name}|{len(encs[name].sequences)}".encode())
        for pair in encs[name].sequences:
            for row in (pair.chosen, pair.rejected):
                h.update(repr((row.input_ids, row.labels)).encode())
    return h.hexdigest()


def cached_reference_logps(path: Path, encs: dict, compute, write: bool) -> str:
    """Every pair's reference log-probs: read from ``path`` when it holds these very pairs (a resumed stage:
    the reference is frozen, so they cannot have changed), else ``compute(name, encoded)`` for each split and,
    with ``write`` (the process that writes this disk's copy of the run), store them there atomically.
    Returns "read" or "computed"."""
    fingerprint = pairs_fingerprint(encs)
    cached = read_json(path) if path.is_file() else None
    if isinstance(cached, dict) and cached.get("fingerprint") == fingerprint:
        for name, enc in encs.items():
            for pair, (c, r) in zip(enc.sequences, cached["logps"][name]):
                pair.ref_chosen, pair.ref_rejected = float(c), float(r)
        return "read"
    for name, enc in encs.items():
        compute(name, enc)
    if write:
        atomic_write_json(path, {"fingerprint": fingerprint, "logps": {
            name: [[p.ref_chosen, p.ref_rejected] for p in enc.sequences] for name, enc in encs.items()}})
    return "computed"
