"""One training loop for both stages: accumulation normalised by tokens, evaluation, checkpoints, resume.

The story of one optimizer step (read ``_Loop.train`` and ``_Loop.step`` top to bottom):
1. the epoch's micro-batches are fixed by (seed, epoch), the same list on every process;
2. a step takes the next ``grad_accum × world_size`` micro-batches (the *window*); each process runs its
   share; we know the window's number of target tokens N before any forward pass;
3. each micro-batch contributes ``sum of its token losses / N`` (× world size: DDP and FSDP average
   gradients over processes), so the step's gradient is the mean over *tokens*, not over micro-batches;
4. clip, step, schedule; every ``eval_every`` steps the val loss; every ``save_every`` a checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from quill.config import TrainConfig
from quill.data.encode import Encoded
from quill.data.pack import IGNORE_INDEX
from quill.models.precision import resolve_precision
from quill.train.batches import BatchList, collate, epoch_batches
from quill.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from quill.train.fastpaths import release_freed_memory, training_fast_paths
from quill.train.evaluation import eval_loss
from quill.train.faults import fault_point
from quill.train.loss import CausalLMLoss
from quill.train.nodes import share
from quill.train.samples import EvalSamples, samples_row
from quill.train.sharding import ShardedCopy, describe, is_sharded


@dataclass
class StageInputs:
    """What ``fit`` trains one stage on."""
    name: str
    train_cfg: TrainConfig
    train: Encoded
    val: BatchList | None
    test: BatchList | None = None
    pad_id: int = 0
    attention: str = "auto"    # model.attn_implementation: "auto" lets packed training use flex attention
    samples: EvalSamples | None = None  # the fixed prompts' poetic score at each evaluation
    # model -> its loss module (train.dpo.DPOLoss for a dpo stage); None: CausalLMLoss
    loss_module: Callable[[torch.nn.Module], torch.nn.Module] | None = None


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms (1-D parameters), the usual practice."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = {"fused": True} if next(model.parameters()).device.type == "cuda" else {}
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.999), **fused)


def plan_steps(n_batches: int, cfg, world: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps)."""
    per_epoch = max(1, math.ceil(n_batches / (cfg.grad_accum * world)))
    total = cfg.max_steps or max(1, math.ceil(per_epoch * cfg.epochs))
    return per_epoch, total


def fit(model: torch.nn.Module, inputs: StageInputs, accelerator, run, resume: bool = False) -> dict:
    """Set up (loss module, optimizer, schedule, precision, fast paths), then train: ``_Loop``."""
    cfg = inputs.train_cfg
    world, main = accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    amp_dtype = resolve_precision(cfg.precision, device)
    shards = ShardedCopy(model, accelerator) if is_sharded(accelerator) else None  # FSDP (train.sharding)
    trained = shards.trained if shards else model
    module = (inputs.loss_module or CausalLMLoss)(trained)
    optimizer = build_optimizer(module, cfg)
    n_batches = len(epoch_batches(inputs.train, cfg.micro_batch, cfg.seed, 0, True, cfg.packing))
    _, total_steps = plan_steps(n_batches, cfg, world)
    warmup = int(cfg.warmup if cfg.warmup >= 1 else round(cfg.warmup * total_steps))
    scheduler = get_scheduler({"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule],
                              optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    wrapped, optimizer = (shards.prepare if shards else accelerator.prepare)(module, optimizer)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda" else None

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)

    with training_fast_paths(trained, compile_setting="off" if shards else cfg.compile, attention=inputs.attention,
                             device=device, packing=cfg.packing, micro_batches=total_steps * cfg.grad_accum) as fast:
        if main:
            print(f"[{inputs.name}] fast paths: attention {fast['attention']}, "
                  f"{fast['compiled_blocks']} compiled blocks (train.compile: {cfg.compile})")
        # compiled blocks: every micro-batch padded to one shape (the short last one too): no recompiling for it
        static = (cfg.micro_batch, cfg.block_size if cfg.packing else 0) if fast["compiled_blocks"] else (0, 0)
        result = _Loop(_Training(module, wrapped, optimizer, scheduler, scaler, autocast, total_steps, static,
                                 shards), inputs, accelerator, run).train(resume)
    if shards:  # the caller's model, whole, with the trained weights: merging and saving need nothing else
        shards.gather()
    result.update(fast, distributed=describe(accelerator))
    accelerator.free_memory()
    return result


@dataclass
class _Training:
    """What ``fit`` set up for the training loop."""
    module: torch.nn.Module    # CausalLMLoss around the model
    wrapped: torch.nn.Module   # the same, as accelerate prepared it (DDP/FSDP hooks)
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object             # GradScaler for fp16 on CUDA, else None
    autocast: object           # () -> autocast context in the stage's precision
    total_steps: int
    static_shape: tuple[int, int]  # (rows, width) every micro-batch is padded to; (0, 0): as collated
    shards: ShardedCopy | None = None  # FSDP: the caller's model and its sharded copy (train.sharding)


@dataclass
class LoopState:
    """Where a stage's training stands: what a checkpoint saves (``state.json``) and resume restores."""
    step: int = 0
    epoch: int = 0
    batch: int = 0                   # the next micro-batch of the epoch
    tokens: int = 0                  # this process's useful tokens (no padding)
    loss_tokens: int = 0             # target tokens so far, all processes
    loss_sum: float = 0.0            # their summed loss
    best_val: float | None = None
    bad_evals: int = 0               # evaluations since best_val improved (early stopping)
    val_loss_before: float | None = None
    wall_s: float = 0.0


class _Loop:
    """One stage's training, in named steps: :meth:`restore`, then :meth:`step` / :meth:`log_step` /
    :meth:`maybe_evaluate` / :meth:`maybe_save` for each optimizer step, then :meth:`finish`."""

    def __init__(self, t: _Training, inputs: StageInputs, accelerator, run):
        self.t, self.inputs, self.acc, self.run, self.cfg = t, inputs, accelerator, run, inputs.train_cfg
        self.rank, self.world, self.main = accelerator.process_index, accelerator.num_processes, \
            accelerator.is_main_process
        self.device, self.ckpt_dir, self.sharded = accelerator.device, run.checkpoint(inputs.name), bool(t.shards)
        self.state, self.stop = LoopState(), False

    def train(self, resume: bool) -> dict:
        self.restore(resume)
        st, cfg = self.state, self.cfg
        bar = tqdm(total=self.t.total_steps, initial=st.step, desc=self.inputs.name, disable=not self.main,
                   unit="step", dynamic_ncols=True)
        self.t.wrapped.train()
        self.t0, self.tokens_at_start, self.t_resume = time.perf_counter() - st.wall_s, st.tokens, time.perf_counter()
        self.stop = st.step >= self.t.total_steps
        while not self.stop:
            batches = epoch_batches(self.inputs.train, cfg.micro_batch, cfg.seed, st.epoch, True, cfg.packing)
            while st.batch < len(batches):
                step_loss, tps = self.step(batches[st.batch: st.batch + cfg.grad_accum * self.world])
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
                self.maybe_evaluate()
                self.maybe_save()
                fault_point(f"step:{self.inputs.name}:{st.step}")
                if st.step >= self.t.total_steps or self.stop:
                    self.stop = True
                    break
            if not self.stop:
                st.epoch, st.batch = st.epoch + 1, 0
        bar.close()
        return self.finish()

    def evaluate(self, loader) -> float:
        with self.t.autocast():
            return eval_loss(self.t.module, loader, max_batches=self.cfg.eval_batches, accelerator=self.acc)["loss"]

    def restore(self, resume: bool) -> None:
        """From the last checkpoint (``resume``), else measure the val loss before training."""
        found = share(resume and self.main and find_checkpoint(self.ckpt_dir), self.acc)  # rank 0's disk decides
        if found:
            loaded = load_checkpoint(found, self.t.module, self.t.optimizer, self.t.scheduler, self.acc, self.sharded)
            self.state = LoopState(**{k: v for k, v in loaded.items() if k in LoopState.__dataclass_fields__})
            if self.main:
                self.run.truncate_metrics(self.inputs.name, self.state.step)
                print(f"[{self.inputs.name}] resumed at step {self.state.step}/{self.t.total_steps} from {found}")
        elif self.inputs.val is not None:
            self.state.val_loss_before = self.evaluate(self.inputs.val)
            self._log_eval(self.state.val_loss_before, tensorboard=False)

    def step(self, win: list) -> tuple[float, float]:
        """One optimizer step over the window ``win`` of micro-batches; returns (step loss, tokens/s)."""
        t, st, inputs, world = self.t, self.state, self.inputs, self.world
        seqs = inputs.train.sequences
        n_target = sum(seqs[i].loss_tokens for b in win for i in b)  # known before any forward pass
        # every process runs as many micro-batches (extra ones without loss): DDP's sync, FSDP's gathers are collective
        mine = win[self.rank::world]
        rows = mine + [win[0]] * (-(-len(win) // world) - len(mine))
        loss_sum = torch.zeros((), device=self.device)
        for j, b in enumerate(rows):
            idle = j >= len(mine)
            batch = collate([seqs[i] for i in b], inputs.pad_id, *t.static_shape)
            if idle:
                batch["labels"].fill_(IGNORE_INDEX)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            sync = contextlib.nullcontext() if j == len(rows) - 1 else self.acc.no_sync(t.wrapped)
            with sync:
                with t.autocast():
                    s, _ = t.wrapped(**batch)
                loss = s * world / max(n_target, 1)
                (t.scaler.scale(loss) if t.scaler else loss).backward()
            loss_sum += s.detach().float()
            release_freed_memory(self.device)  # CPU: keeps glibc's heaps from growing step after step
            if not idle:  # useful tokens: the sequences' own, not the padding collate added
                st.tokens += sum(len(seqs[i]) for i in b)
        grad_norm = self._optimizer_step()
        st.batch, st.step = st.batch + len(win), st.step + 1
        step_loss = self.acc.reduce(loss_sum, "sum").item() / max(n_target, 1)
        st.loss_sum += step_loss * n_target
        st.loss_tokens += n_target
        tokens = st.tokens - self.tokens_at_start
        if world > 1:
            tokens = self.acc.reduce(torch.tensor(tokens, device=self.device), "sum").item()
        tps = tokens / max(time.perf_counter() - self.t_resume, 1e-9)
        self.log_step(step_loss, tps, grad_norm)
        return step_loss, tps

    def _optimizer_step(self):
        """Unscale (fp16), clip, step, schedule, zero the gradients; returns the gradient norm (or None)."""
        t, cfg = self.t, self.cfg
        if t.scaler:
            t.scaler.unscale_(t.optimizer)
        grad_norm = self.acc.clip_grad_norm_(t.wrapped.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm else None
        if t.scaler:
            t.scaler.step(t.optimizer)
            t.scaler.update()
        else:
            t.optimizer.step()
        t.scheduler.step()
        t.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def log_step(self, step_loss: float, tps: float, grad_norm) -> None:
        st, name = self.state, self.inputs.name
        extra = self.t.module.pop_stats(self.acc) if hasattr(self.t.module, "pop_stats") else {}  # dpo stats
        if self.main and (st.step % self.cfg.log_every == 0 or st.step == self.t.total_steps):
            rec = {"stage": name, "step": st.step, "epoch": st.epoch, "loss": step_loss,
                   "lr": self.t.scheduler.get_last_lr()[0], "tokens_per_s": round(tps, 1),
                   "grad_norm": float(grad_norm) if grad_norm is not None else None, **extra}
            self.run.log(rec)
            self.acc.log({f"{name}/train_loss": step_loss, f"{name}/lr": rec["lr"], f"{name}/tokens_per_s": tps,
                          **{f"{name}/{k}": v for k, v in extra.items()}}, step=st.step)

    def maybe_evaluate(self) -> None:
        """Every ``eval_every`` steps (not the last: ``finish`` does it): val loss, samples, early stopping."""
        st, cfg = self.state, self.cfg
        if not (cfg.eval_every and st.step % cfg.eval_every == 0 and st.step < self.t.total_steps
                and self.inputs.val is not None):
            return
        val = self.evaluate(self.inputs.val)
        self._log_eval(val)
        if st.best_val is None or val < st.best_val - 1e-4:
            st.best_val, st.bad_evals = val, 0
            return
        st.bad_evals += 1
        if cfg.early_stopping_patience and st.bad_evals >= cfg.early_stopping_patience:
            if self.main:
                print(f"[{self.inputs.name}] early stop at step {st.step}: val loss {val:.4f} "
                      f"did not improve on {st.best_val:.4f} for {st.bad_evals} evaluations")
            self.stop = True

    def _log_eval(self, val: float, tensorboard: bool = True) -> None:
        name, step = self.inputs.name, self.state.step
        with self.t.shards.gathered() if self.sharded and self.inputs.samples else contextlib.nullcontext():
            row = samples_row(self.inputs.samples, name, step, self.acc) if self.main else {}
        if self.main:
            self.run.log({"stage": name, "step": step, "val_loss": val, **row})
            if tensorboard:
                self.acc.log({f"{name}/val_loss": val}, step=step)

    def maybe_save(self) -> None:
        st, cfg = self.state, self.cfg
        if cfg.save_every and st.step % cfg.save_every == 0 and st.step < self.t.total_steps:
            st.wall_s = time.perf_counter() - self.t0
            save_checkpoint(self.ckpt_dir, self.t.module, self.t.optimizer, self.t.scheduler, asdict(st), self.acc,
                            self.sharded)

    def finish(self) -> dict:
        """The stage's summary: losses, tokens, time; the val loss after and the test loss."""
        st, inputs = self.state, self.inputs
        wall = time.perf_counter() - self.t0
        tokens = int(self.acc.reduce(torch.tensor(st.tokens, device=self.device), "sum").item()) \
            if self.world > 1 else int(st.tokens)
        result = {"steps": st.step, "train_loss": st.loss_sum / max(st.loss_tokens, 1),
                  "val_loss_before": st.val_loss_before, "tokens": tokens, "loss_tokens": st.loss_tokens,
                  "wall_s": round(wall, 2), "stopped_early": st.step < self.t.total_steps,
                  "tokens_per_s": round(tokens / max(wall, 1e-9), 1)}
        if inputs.val is not None:
            result["val_loss_after"] = self.evaluate(inputs.val)
            self._log_eval(result["val_loss_after"], tensorboard=False)
        if inputs.test is not None:
            result["test_loss"] = self.evaluate(inputs.test)
        return result
