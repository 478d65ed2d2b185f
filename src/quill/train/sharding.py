"""Sharded training (FSDP2) through accelerate, and getting an ordinary model back out of it.

The story, in the order a run meets it:
1. :func:`accelerator_kwargs`: ``distributed.strategy: fsdp`` (or ``auto`` under an accelerate config that
   turns FSDP on) gives accelerate a ``FullyShardedDataParallelPlugin(fsdp_version=2)``. accelerate turns
   FSDP on only for accelerators (CUDA, XPU, ...); on CPU processes (gloo) :func:`enable_on_cpu` switches
   its state to FSDP itself, so the CPU tests drive accelerate's own FSDP2 code (``prepare``: one
   ``fully_shard`` unit per transformer block and the rest in the root, ``no_sync``, ``clip_grad_norm_``),
   the code a GPU run takes.
2. ``fit`` trains a :class:`ShardedCopy` of the stage's model: its own modules holding the *same* parameter
   tensors. ``fully_shard`` replaces the copy's parameters with shards (DTensors) and leaves the caller's
   model whole, its parameters emptied while the shards train (so sharding saves memory on a CPU too).
3. ``ShardedCopy.gather`` fills them with the trained weights (every process takes part: all-gathers), so
   merging, saving and sampling see an ordinary model, the same as after one-process training.
4. Checkpoints (``train.checkpoint``) hold full tensors gathered here (:func:`full_state`,
   :func:`load_full_state`): one format for any number of processes, written and read by the main
   process alone (other processes receive their shards by broadcast), so resuming needs no shared disk.

The loss module is the FSDP root: the embeddings, the final norm and the (tied) output layer are gathered
for its whole forward, so the chunked, fused vocabulary projection in ``train/loss.py`` reads
``lm_head.weight`` whole, one gather per micro-batch, and its gradient is reduce-scattered like any other.
"""
from __future__ import annotations

import contextlib
import copy
import os

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.dataclasses import get_module_class_from_name
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from quill.train.loss import hf_model


def launched_strategy(configured: str) -> str:
    """The strategy this launch trains with: the config's, or for ``auto`` what the launcher's accelerate
    config asked for (``accelerate launch --config_file configs/accelerate/fsdp.yaml`` sets ACCELERATE_USE_FSDP)."""
    if configured != "auto":
        return configured
    return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" else "ddp"


def accelerator_kwargs(strategy: str, reshard_after_forward: bool) -> dict:
    """What ``Accelerator(...)`` gets for the strategy: an FSDP2 plugin, or nothing (DDP, one process)."""
    if strategy != "fsdp":
        return {}
    # FULL_STATE_DICT: accelerate's own save_model would gather whole tensors; quill's checkpoints do the same
    return {"fsdp_plugin": FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=reshard_after_forward,
        state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False, activation_checkpointing=False)}


def enable_on_cpu(accelerator, kwargs: dict) -> None:
    """accelerate ignores an FSDP plugin on CPU processes (MULTI_CPU); FSDP2 itself runs there over gloo."""
    plugin = kwargs.get("fsdp_plugin")
    state = accelerator.state
    if plugin is not None and state.distributed_type == DistributedType.MULTI_CPU:
        # each AcceleratorState() copies PartialState's shared fields over its own: set the type in both,
        # as accelerate itself does when it turns FSDP on
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin


def is_sharded(accelerator) -> bool:
    return accelerator is not None and accelerator.distributed_type == DistributedType.FSDP


class ShardedCopy:
    """The stage's model and the copy of it that FSDP trains (``trained``: its own modules, the same parameter
    and buffer tensors, so ``fully_shard`` may rewrite it in place and leave the caller's model whole). While
    the shards train, the caller's parameters hold no memory (:meth:`release`); :meth:`gather` fills them."""

    def __init__(self, model: torch.nn.Module, accelerator):
        self.model, self.accelerator, self.device, self.module = model, accelerator, accelerator.device, None
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
        self.trained = copy.deepcopy(model, memo=shared)
        names = hf_model(model)._no_split_modules or []  # the block classes (a model may name absent ones)
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = [
            n for n in names if get_module_class_from_name(model, n) is not None]

    def prepare(self, module: torch.nn.Module, optimizer):
        """``accelerator.prepare`` of the loss module around ``trained`` (FSDP2 shards it in place) and its
        optimizer; then the shards alone hold the weights."""
        wrapped, optimizer = self.accelerator.prepare(module, optimizer)
        self.module = module
        self.release()
        return wrapped, optimizer

    def release(self) -> None:
        """Free the caller's full weights (each parameter keeps its name, dtype and device, not its data)."""
        for p in self.model.parameters():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    def gather(self) -> None:
        """The weights trained so far, whole, into the caller's model (collective: every process all-gathers).
        The loss module names the model ``model.``; tied weights are one parameter in both."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, p in self.module.named_parameters():
                target = params[name.removeprefix("model.")]
                target.data = _full(p.detach()).to(self.device, target.dtype)

    @contextlib.contextmanager
    def gathered(self):
        """Inside: the caller's model holds the weights trained so far, e.g. to sample from it."""
        self.gather()
        yield
        self.release()


def describe(accelerator) -> str:
    """How a stage trained, for its summary: "one process", "ddp x2", "fsdp x2"."""
    world = accelerator.num_processes
    return "one process" if world == 1 else f"{'fsdp' if is_sharded(accelerator) else 'ddp'} x{world}"


def _full(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor of its own: a DTensor's shards gathered, else a copy."""
    return t.full_tensor() if isinstance(t, DTensor) else t.clone()


def full_state(module: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """(trainable weights, optimizer state), whole, on the CPU of the main process ({} elsewhere).
    Collective. The optimizer state is keyed by parameter name, not by position."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    # an evaluation (a forward, no backward) leaves the root's weights gathered, and the optimizer-state helper
    # looks the optimizer's shards up among the registered parameters: reshard first
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
    weights = {n: _full(p.detach()) for n, p in module.named_parameters() if p.requires_grad}
    rank0 = torch.distributed.get_rank() == 0
    weights = {n: t.cpu().contiguous() for n, t in weights.items()} if rank0 else {}
    optim = get_optimizer_state_dict(module, _inner(optimizer), options=opts)
    return weights, optim


def load_full_state(module: torch.nn.Module, optimizer, weights: dict, optim: dict) -> None:
    """Scatter what the main process read (``weights``, ``optim``; empty elsewhere) back into the shards.
    Collective."""
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(module, weights, options=opts)
    set_optimizer_state_dict(module, _inner(optimizer), optim, options=opts)


def _inner(optimizer):
    """accelerate's AcceleratedOptimizer wraps the torch optimizer that the state-dict helpers expect."""
    return getattr(optimizer, "optimizer", optimizer)
