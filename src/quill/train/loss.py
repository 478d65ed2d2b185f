"""The causal-LM loss as a sum over target tokens, computed only where there are targets.

Two things the usual ``model(labels=...).loss`` does not give us:
1. a *sum* and a *count* instead of a per-batch mean, so gradient accumulation (and several processes)
   can normalise by the number of loss-carrying tokens of the whole optimizer step — a per-micro-batch
   mean over-weights short batches;
2. the vocabulary projection only for positions that carry loss. The logits of a 49k-token vocabulary are
   the largest tensor in a small model's step; prompt tokens (SFT) and padding need none of them.

The wrapper is an ``nn.Module`` so that ``accelerate`` can wrap *it* (DDP/FSDP hook into ``forward``);
calling the inner backbone directly from outside would bypass gradient synchronisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quill.data.pack import IGNORE_INDEX

CHUNK = 2048  # target positions projected to the vocabulary at once (bounds the fp32 logits tensor)


def hf_model(model: nn.Module) -> nn.Module:
    """The transformers ``PreTrainedModel`` inside a peft wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class CausalLMLoss(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        hf = hf_model(model)
        # models that post-process logits (soft-capping, scaling) take the plain path
        plain = getattr(hf.config, "final_logit_softcapping", None) or getattr(hf.config, "logit_scale", None)
        self.fast = not plain and hf.get_output_embeddings() is not None and hf.base_model is not hf

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        n = keep.sum()
        if not self.fast:
            logits = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                use_cache=False).logits[:, :-1]
            return F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum"), n
        hf = hf_model(self.model)
        hidden = hf.base_model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state[:, :-1]
        hidden, y = hidden[keep], targets[keep]
        head = hf.get_output_embeddings()
        total = hidden.new_zeros((), dtype=torch.float32)
        for h, t in zip(hidden.split(CHUNK), y.split(CHUNK)):
            total = total + F.cross_entropy(head(h).float(), t, reduction="sum")
        if hidden.shape[0] == 0:
            total = total + 0.0 * hidden.sum()  # keep the graph connected for DDP when no token carries loss
        return total, n
