"""The causal-LM loss as a sum over target tokens, computed only where there are targets.

Two things the usual ``model(labels=...).loss`` does not give us:
1. a *sum* and a *count* instead of a per-batch mean, so gradient accumulation (and several processes)
   can normalise by the number of loss-carrying tokens of the whole optimizer step — a per-micro-batch
   mean over-weights short batches;
2. the vocabulary projection only for positions that carry loss, fused with the cross-entropy
   (``linear_cross_entropy``): the logits of a 49k-token vocabulary are the largest tensors of a small
   model's step (fp32 logits, their log-softmax and its gradient: ~600 MB for 1,024 tokens of SmolLM2);
   here they exist one chunk at a time and the gradient is computed in the same pass. Prompt tokens
   (SFT) and padding need none of them.

The wrapper is an ``nn.Module`` so that ``accelerate`` can wrap *it* (DDP/FSDP hook into ``forward``);
calling the inner backbone directly from outside would bypass gradient synchronisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quill.data.pack import IGNORE_INDEX

# target positions projected to the vocabulary at once: bounds the fp32 logits tensor on a CPU; on a GPU
# memory is plentiful and small matmuls would waste the chip
CPU_CHUNK = 256
GPU_CHUNK = 8192


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
        out = self._outputs(input_ids, position_ids, attention_mask)
        if not self.fast:
            return F.cross_entropy(out[:, :-1][keep].float(), targets[keep], reduction="sum"), n
        head = hf_model(self.model).get_output_embeddings()
        return linear_cross_entropy(out[:, :-1][keep], head.weight, head.bias, targets[keep], self._chunk(out)), n

    def row_losses(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed target-token NLL of each row, target tokens of each row): a row's answer log-prob is
        minus its NLL (DPO). Fast path: one fused projection per row, so memory stays one chunk of logits."""
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        out = self._outputs(input_ids, position_ids, attention_mask)[:, :-1]
        if not self.fast:
            nll = F.cross_entropy(out.float().transpose(1, 2), targets, reduction="none", ignore_index=IGNORE_INDEX)
            return nll.sum(1), keep.sum(1)
        head = hf_model(self.model).get_output_embeddings()
        sums = [linear_cross_entropy(out[r][keep[r]], head.weight, head.bias, targets[r][keep[r]], self._chunk(out))
                for r in range(out.shape[0])]
        return torch.stack(sums), keep.sum(1)

    def _outputs(self, input_ids, position_ids, attention_mask) -> torch.Tensor:
        """Logits (plain path) or the last hidden states (fast path: the head is applied where there are targets)."""
        if not self.fast:
            return self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                              use_cache=False).logits
        return hf_model(self.model).base_model(input_ids=input_ids, position_ids=position_ids,
                                               attention_mask=attention_mask, use_cache=False).last_hidden_state

    @staticmethod
    def _chunk(hidden: torch.Tensor) -> int:
        return CPU_CHUNK if hidden.device.type == "cpu" else GPU_CHUNK


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, chunk: int = 256, pad_vocab: int | None = None) -> torch.Tensor:
    """``F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")`` without the
    full logits: chunk by chunk, the forward pass also computes the gradient (softmax − one-hot), which
    is all the backward pass needs. Same FLOPs as the plain version; peak memory one chunk of logits.

    ``pad_vocab``: round the vocabulary up to a multiple of this with zero rows whose logits are −inf (no
    probability, no gradient). Default 64 on GPUs: GPT-2's 50,257 rows make cuBLAS fall back to slow
    unaligned kernels (measured on an H200: the loss took ~60% of a GPT-2 step), 1 (no padding) on CPUs."""
    if hidden.shape[0] == 0:  # keep the graph connected (head too) for DDP / FSDP when no token carries loss
        return 0.0 * (hidden.sum(dtype=torch.float32) + weight.sum() + (bias.sum() if bias is not None else 0.0))
    pad_vocab = pad_vocab or (1 if hidden.device.type == "cpu" else 64)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk, pad_vocab, torch.is_grad_enabled())


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, pad_vocab, grad_enabled):
        want_h, want_w, want_b = (grad_enabled and x is not None and x.requires_grad for x in (hidden, weight, bias))
        grads = want_h or want_w or want_b   # False under no_grad (evaluation): the loss alone, no gradient pass
        # under autocast the projection runs in its dtype, as nn.Linear would; the softmax is always fp32
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
            else hidden.dtype
        vocab = weight.shape[0]
        pad = -vocab % pad_vocab
        w = F.pad(weight.to(dtype), (0, 0, 0, pad))
        b = F.pad(bias.to(dtype), (0, pad)) if bias is not None else None
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if grads else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=weight.device) if want_w else None
        grad_b = torch.zeros(w.shape[0], dtype=torch.float32, device=weight.device) if want_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk].to(dtype), targets[start:start + chunk]
            logits = F.linear(h, w, b).float()
            if pad:
                logits[:, vocab:] = float("-inf")
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not grads:
                continue
            probs = logits.sub_(lse[:, None]).exp_()          # softmax, in place of the logits
            probs[torch.arange(len(t), device=t.device), t] -= 1.0   # d(loss)/d(logits)
            g = probs.to(dtype)
            grad_h[start:start + chunk] = g @ w
            if want_w:
                grad_w += g.t() @ h
            if want_b:
                grad_b += probs.sum(0)
        ctx.save_for_backward(grad_h, grad_w[:vocab] if want_w else None, grad_b[:vocab] if want_b else None)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        return ((grad_h * grad_out).to(h_dtype),
                (grad_w * grad_out).to(w_dtype) if grad_w is not None else None,
                (grad_b * grad_out).to(b_dtype) if grad_b is not None else None, None, None, None, None)
