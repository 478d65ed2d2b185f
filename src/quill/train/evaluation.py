"""Validation and test loss: token-weighted, the same on one process or several."""
from __future__ import annotations

import torch
from torch import nn

from quill.train.faults import fault_point
from quill.train.loss import CausalLMLoss


@torch.no_grad()
def eval_loss(model: nn.Module, loader, max_batches: int | None = None, accelerator=None) -> dict:
    """Token-weighted mean loss over a split: sum of token losses / number of target tokens.

    With an ``accelerator`` each process takes every world-size-th batch and the sums are reduced, so the
    figure is the same as on one process; a process short of a batch in the last round repeats one without
    counting it, because sharded (FSDP) weights are gathered by every process for every forward.
    """
    module = model if isinstance(model, CausalLMLoss) else CausalLMLoss(model)
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    seen, done, last = 0, 0, None
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        seen, last = i + 1, batch
        if i % world != rank:
            continue
        if i == 1:
            fault_point("eval")
        s, n = _forward(module, batch, accelerator, device)
        total += s.double()
        count += n.double()
        done += 1
    if done < -(-seen // world):  # short of a batch in the last round: repeat one, count nothing
        _forward(module, last, accelerator, device)
    if accelerator is not None and world > 1:
        total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    module.train(was_training)
    tokens = int(count.item())
    return {"loss": float(total.item() / max(tokens, 1)) if tokens else float("nan"), "tokens": tokens}


def _forward(module, batch: dict, accelerator, device):
    batch = {k: v.to(device) for k, v in batch.items()}
    with _autocast(accelerator, device):
        return module(**batch)


def _autocast(accelerator, device):
    if accelerator is not None:
        return accelerator.autocast()
    return torch.autocast(device.type, enabled=False)
