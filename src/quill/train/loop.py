"""One training loop for both stages: accumulation normalised by tokens, evaluation, checkpoints, resume.

The story of one optimizer step (read ``fit`` top to bottom):
1. the epoch's micro-batches are fixed by (seed, epoch), the same list on every process;
2. a step takes the next ``grad_accum × world_size`` micro-batches (the *window*); each process runs its
   share; we know the window's number of target tokens N before any forward pass;
3. each micro-batch contributes ``sum of its token losses / N`` (× world size, because DDP averages
   gradients over processes), so the step's gradient is the mean over *tokens*, not over micro-batches;
4. clip, step, schedule; every ``eval_every`` steps the val loss; every ``save_every`` a checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from quill.data.encode import Encoded
from quill.data.pack import IGNORE_INDEX
from quill.train.batches import collate, epoch_batches
from quill.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from quill.train.fastpaths import release_freed_memory, training_fast_paths
from quill.train.evaluation import eval_loss
from quill.train.faults import fault_point
from quill.train.loss import CausalLMLoss
from quill.train.samples import samples_row


@dataclass
class StageInputs:
    name: str
    train_cfg: object          # quill.config.TrainConfig
    train: Encoded
    val: object                # BatchList or None
    test: object = None        # BatchList or None
    pad_id: int = 0
    attention: str = "auto"    # model.attn_implementation: "auto" lets packed training use flex attention
    samples: object = None     # train.samples.EvalSamples: the fixed prompts' poetic score at each evaluation
    loss_module: object = None  # model -> loss module (train.dpo.DPOLoss for a dpo stage); None: CausalLMLoss


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 where the hardware runs it faster (recent GPUs; CPUs with AMX), else fp32."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision == "fp32":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def cpu_has_bf16() -> bool:
    """AMX only: with AVX512-BF16 alone a bf16 matmul peaks at the fp32 rate and, with the conversions,
    runs slower (measured: oneDNN bf16 ~0.55x MKL fp32 on a Xeon without AMX; see docs/PERFORMANCE.md)."""
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return False
    return "amx_bf16" in flags


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
    """Set up (loss module, optimizer, schedule, precision, fast paths), then train: ``_fit``."""
    cfg = inputs.train_cfg
    world, main = accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    amp_dtype = resolve_precision(cfg.precision, device)
    module = inputs.loss_module(model) if inputs.loss_module else CausalLMLoss(model)
    optimizer = build_optimizer(module, cfg)
    n_batches = len(epoch_batches(inputs.train, cfg.micro_batch, cfg.seed, 0, True, cfg.packing))
    _, total_steps = plan_steps(n_batches, cfg, world)
    warmup = int(cfg.warmup if cfg.warmup >= 1 else round(cfg.warmup * total_steps))
    scheduler = get_scheduler({"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule],
                              optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    wrapped, optimizer = accelerator.prepare(module, optimizer)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda" else None

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)

    with training_fast_paths(model, compile_setting=cfg.compile, attention=inputs.attention, device=device,
                             packing=cfg.packing, micro_batches=total_steps * cfg.grad_accum) as fast:
        if main:
            print(f"[{inputs.name}] fast paths: attention {fast['attention']}, "
                  f"{fast['compiled_blocks']} compiled blocks (train.compile: {cfg.compile})")
        # compiled blocks: every micro-batch padded to one shape (the short last one too): no recompiling for it
        static = (cfg.micro_batch, cfg.block_size if cfg.packing else 0) if fast["compiled_blocks"] else (0, 0)
        result = _fit(_Training(module, wrapped, optimizer, scheduler, scaler, autocast, total_steps, static),
                      inputs, accelerator, run, resume)
    result.update(fast)
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


def _fit(t: _Training, inputs: StageInputs, accelerator, run, resume: bool) -> dict:
    module, wrapped, optimizer, scheduler, scaler, autocast, total_steps, static_shape = (
        t.module, t.wrapped, t.optimizer, t.scheduler, t.scaler, t.autocast, t.total_steps, t.static_shape)
    cfg = inputs.train_cfg
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device

    def evaluate(loader, limit=None):
        with autocast():
            return eval_loss(module, loader, max_batches=limit or cfg.eval_batches, accelerator=accelerator)

    ckpt_dir = run.checkpoint(inputs.name)
    state = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0, "loss_tokens": 0, "loss_sum": 0.0,
             "best_val": None, "bad_evals": 0, "val_loss_before": None, "wall_s": 0.0}
    found = find_checkpoint(ckpt_dir) if resume else None
    if found is not None:
        state.update(load_checkpoint(found, module, optimizer, scheduler, rank))
        if main:
            run.truncate_metrics(inputs.name, state["step"])
            print(f"[{inputs.name}] resumed at step {state['step']}/{total_steps} from {found}")
    elif inputs.val is not None:
        state["val_loss_before"] = evaluate(inputs.val)["loss"]
        if main:
            run.log({"stage": inputs.name, "step": 0, "val_loss": state["val_loss_before"],
                     **samples_row(inputs.samples, inputs.name, 0, accelerator)})

    bar = tqdm(total=total_steps, initial=state["step"], desc=inputs.name, disable=not main, unit="step",
               dynamic_ncols=True)
    wrapped.train()
    t0, tokens_at_start = time.perf_counter() - state["wall_s"], state["tokens"]
    t_resume = time.perf_counter()
    stop = state["step"] >= total_steps
    while not stop:
        batches = epoch_batches(inputs.train, cfg.micro_batch, cfg.seed, state["epoch"], True, cfg.packing)
        window = cfg.grad_accum * world
        while state["batch"] < len(batches):
            win = batches[state["batch"]: state["batch"] + window]
            n_target = sum(inputs.train.sequences[i].loss_tokens for b in win for i in b)
            mine = win[rank::world] or [win[0]]  # a process with no batch in a short last window still syncs
            idle = not win[rank::world]
            loss_sum = torch.zeros((), device=device)
            for j, b in enumerate(mine):
                batch = collate([inputs.train.sequences[i] for i in b], inputs.pad_id, *static_shape)
                if idle:
                    batch["labels"].fill_(IGNORE_INDEX)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                sync = contextlib.nullcontext() if j == len(mine) - 1 else accelerator.no_sync(wrapped)
                with sync:
                    with autocast():
                        s, _ = wrapped(**batch)
                    loss = s * world / max(n_target, 1)
                    (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += s.detach().float()
                release_freed_memory(device)  # CPU: keeps glibc's heaps from growing step after step
                if not idle:  # useful tokens: the sequences' own, not the padding collate added
                    state["tokens"] += sum(len(inputs.train.sequences[i]) for i in b)
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = (accelerator.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
                         if cfg.max_grad_norm else None)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["batch"] += len(win)
            state["step"] += 1
            step_loss = accelerator.reduce(loss_sum, "sum").item() / max(n_target, 1)
            state["loss_sum"] += step_loss * n_target
            state["loss_tokens"] += n_target
            tokens_total = accelerator.reduce(torch.tensor(state["tokens"] - tokens_at_start, device=device),
                                              "sum").item() if world > 1 else state["tokens"] - tokens_at_start
            tps = tokens_total / max(time.perf_counter() - t_resume, 1e-9)
            extra = module.pop_stats(accelerator) if hasattr(module, "pop_stats") else {}  # dpo: rewards, logps
            if main and (state["step"] % cfg.log_every == 0 or state["step"] == total_steps):
                rec = {"stage": inputs.name, "step": state["step"], "epoch": state["epoch"], "loss": step_loss,
                       "lr": scheduler.get_last_lr()[0], "tokens_per_s": round(tps, 1),
                       "grad_norm": float(grad_norm) if grad_norm is not None else None, **extra}
                run.log(rec)
                accelerator.log({f"{inputs.name}/train_loss": step_loss, f"{inputs.name}/lr": rec["lr"],
                                 f"{inputs.name}/tokens_per_s": tps,
                                 **{f"{inputs.name}/{k}": v for k, v in extra.items()}}, step=state["step"])
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            if cfg.eval_every and state["step"] % cfg.eval_every == 0 and state["step"] < total_steps \
                    and inputs.val is not None:
                if _evaluate_and_maybe_stop(evaluate, inputs, state, run, accelerator, cfg):
                    stop = True
            if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < total_steps:
                state["wall_s"] = time.perf_counter() - t0
                save_checkpoint(ckpt_dir, module, optimizer, scheduler, state, rank, world,
                                accelerator.wait_for_everyone)
            fault_point(f"step:{inputs.name}:{state['step']}")
            if state["step"] >= total_steps or stop:
                stop = True
                break
        if not stop:
            state["epoch"] += 1
            state["batch"] = 0
    bar.close()
    wall = time.perf_counter() - t0
    tokens = int(accelerator.reduce(torch.tensor(state["tokens"], device=device), "sum").item()) \
        if world > 1 else int(state["tokens"])
    result = {"steps": state["step"], "train_loss": state["loss_sum"] / max(state["loss_tokens"], 1),
              "val_loss_before": state["val_loss_before"], "tokens": tokens,
              "loss_tokens": state["loss_tokens"], "wall_s": round(wall, 2),
              "stopped_early": state["step"] < total_steps}
    result["tokens_per_s"] = round(result["tokens"] / max(wall, 1e-9), 1)
    if inputs.val is not None:
        result["val_loss_after"] = evaluate(inputs.val)["loss"]
        if main:
            run.log({"stage": inputs.name, "step": state["step"], "val_loss": result["val_loss_after"],
                     **samples_row(inputs.samples, inputs.name, state["step"], accelerator)})
    if inputs.test is not None:
        result["test_loss"] = evaluate(inputs.test)["loss"]
    return result


def _evaluate_and_maybe_stop(evaluate, inputs, state, run, accelerator, cfg) -> bool:
    val = evaluate(inputs.val)["loss"]
    if accelerator.is_main_process:
        run.log({"stage": inputs.name, "step": state["step"], "val_loss": val,
                 **samples_row(inputs.samples, inputs.name, state["step"], accelerator)})
        accelerator.log({f"{inputs.name}/val_loss": val}, step=state["step"])
    if state["best_val"] is None or val < state["best_val"] - 1e-4:
        state["best_val"], state["bad_evals"] = val, 0
        return False
    state["bad_evals"] += 1
    if cfg.early_stopping_patience and state["bad_evals"] >= cfg.early_stopping_patience:
        if accelerator.is_main_process:
            print(f"[{inputs.name}] early stop at step {state['step']}: val loss {val:.4f} "
                  f"did not improve on {state['best_val']:.4f} for {state['bad_evals']} evaluations")
        return True
    return False
