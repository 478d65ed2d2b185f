"""FLOPs of one training token, counted as quill's step runs them: the ceiling a speed is measured against.

A token's share of a training step, for a model shape (``train.memory.ModelShape``: ``L`` blocks of linear
layers ``W`` of ``in × out``, a vocabulary projection ``V × h``, ``H`` query heads of ``d``), a sequence (block)
length ``s`` and the stage's adapter; one multiply-add is 2 FLOPs, elementwise work (norms, activations, the
softmax of the loss, the optimizer) is not counted:

- linear forward: ``2 · L · Σ in·out``; the vocabulary projection ``2 · V · h`` per token that has a target
  (quill's fused loss projects only those, ``train.loss``);
- linear backward, frozen weights (LoRA, DoRA): the input gradient, ``2 · in·out`` per matrix, except for the
  matrices that read the embeddings' output in the first block (q, k, v / c_attn), which needs none, since
  nothing below them trains; the projection's input gradient ``2 · V · h``. Full fine-tuning adds every
  weight gradient (``2 · in·out``, and ``2 · V · h`` for the projection, tied or not) and the first block's
  input gradients;
- the adapter: ``r · (in + out)`` multiply-adds per targeted matrix in the forward pass, the same for each of
  the two gradients (input and weight) in the backward pass: ``6 · r · (in + out)``, less the first block's
  input gradients as above. DoRA's weight-norm work is not counted;
- attention, per block: ``QKᵀ`` and ``P·V`` over the whole block, ``4 · s · H · d`` per token (the kernels
  compute every score: a causal or block-diagonal mask skips nothing); its backward pass ``2.5×`` that for the
  fused kernels (flash, memory-efficient: the scores recomputed, then four products, the convention of
  ``torch.utils.flop_counter``), ``2×`` on the math path (batched products that keep the scores; where SDPA
  falls back to it, as for GPT-2 here).

``tests/test_flops.py`` checks every term against ``torch.utils.flop_counter.FlopCounterMode`` on a real
quill step. ``bench/train.py`` divides a measured tokens/s by the machine's own GEMM rate at the model's
shapes to report the share of the ceiling that quill reaches ("CPU MFU").
"""
from __future__ import annotations

from dataclasses import dataclass

from quill.config import AdapterConfig
from quill.train.memory import Matrix, ModelShape, targeted

FIRST_BLOCK_INPUTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "attn.c_attn")
FUSED_ATTENTION_BACKWARD = 2.5     # attention's backward FLOPs over its forward ones, fused kernels
MATH_ATTENTION_BACKWARD = 2.0      # ... and on SDPA's math path


@dataclass(frozen=True)
class TokenFlops:
    """FLOPs per trained token of one step, by term (see the module docstring)."""
    linear_forward: float
    head_forward: float
    linear_backward: float
    head_backward: float
    adapter: float
    attention_forward: float
    attention_backward: float

    @property
    def total(self) -> float:
        return (self.linear_forward + self.head_forward + self.linear_backward + self.head_backward + self.adapter
                + self.attention_forward + self.attention_backward)


def _reads_embeddings(m: Matrix) -> bool:
    return m.name in FIRST_BLOCK_INPUTS


def token_flops(shape: ModelShape, adapter: AdapterConfig, seq: int, target_share: float = 1.0,
                attention_backward: float = FUSED_ATTENTION_BACKWARD) -> TokenFlops:
    """FLOPs per token of a training step at block length ``seq``; ``target_share``: the share of tokens that
    carry a target (and so go through the vocabulary projection): ``(seq - 1) / seq`` for packed blocks."""
    matrices, L = shape.matrices(), shape.layers
    full = adapter.method == "full"
    macs = sum(m.fan_in * m.fan_out for m in matrices)
    first = sum(m.fan_in * m.fan_out for m in matrices if _reads_embeddings(m))
    head = shape.vocab * shape.hidden * target_share
    backward = 2 * (L * macs - (0 if full else first)) + (2 * L * macs if full else 0)
    adapter_flops = 0.0
    if not full:
        hit = targeted(shape, adapter.targets)
        per_block = sum(adapter.r * (m.fan_in + m.fan_out) for m in hit)
        first_inputs = sum(adapter.r * m.fan_in for m in hit if _reads_embeddings(m))
        adapter_flops = 6 * L * per_block - 2 * first_inputs
    attention = 4 * seq * shape.heads * shape.head_dim * L
    return TokenFlops(linear_forward=2 * L * macs, head_forward=2 * head, linear_backward=backward,
                      head_backward=(4 if full else 2) * head, adapter=adapter_flops,
                      attention_forward=attention, attention_backward=attention_backward * attention)
