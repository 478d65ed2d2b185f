"""The staged pipeline: set up → (per stage: prepare weights → fit → save) → samples → summary.

Stage 1 (DAPT), stage 2 (SFT) and a preference stage (DPO: pairs, its loss module ``train.dpo.DPOLoss``
and the frozen reference's log-probs computed before its first step) run through the same code; they
differ in their data (``kind``) and in what the previous stage left: by default its LoRA adapter is merged
into the weights before the next stage starts (the reference's method); ``adapter.merge: false`` continues
the same adapter instead.
"""
from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path

import torch

from quill import models
from quill.config import (ConfigError, PipelineConfig, check_strategy, config_base_dir, dump_config, load_config,
                          packaged_config)
from quill.data.prepare import load_prepared, note_tokenized, prepare_stages, save_prepared
from quill.errors import RunError
from quill.files import atomic_write_text
from quill.models.precision import resolve_precision
from quill.models.quantize import require_quantization
from quill.run import RunFolder
from quill.train.batches import build_loader, encode_stage_split, pad_id_of
from quill.train.dpo import DPOLoss, cached_reference_logps, reference_logps
from quill.train.fastpaths import release_freed_memory
from quill.train.loop import StageInputs, fit
from quill.train.nodes import share, writes_copy
from quill.train.samples import eval_samples, sample_prompts
from quill.train.sharding import accelerator_kwargs, enable_on_cpu, launched_strategy


def launch_strategy(cfg: PipelineConfig) -> str:
    """The ``distributed.strategy`` this launch trains with (``auto`` resolved), checked against the config
    and the number of processes before anything is written."""
    strategy = launched_strategy(cfg.distributed.strategy)
    try:
        check_strategy(cfg, strategy)  # auto may have become fsdp
    except ValueError as err:
        raise ConfigError(f"{err} (the launcher's accelerate config turned FSDP on)") from None
    if strategy == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ConfigError("distributed.strategy fsdp shards the model across processes, and this is one: launch "
                          "with torchrun --nproc_per_node N or accelerate launch, or use strategy auto")
    return strategy


def make_accelerator(cfg: PipelineConfig, run: RunFolder, strategy: str = "ddp"):
    """accelerate's Accelerator for the run: its trackers, and the plugin of its strategy (``launch_strategy``)."""
    from accelerate import Accelerator
    trackers = list(cfg.tracking.report_to)
    plugins = accelerator_kwargs(strategy, cfg.distributed.reshard_after_forward)
    acc = Accelerator(cpu=not torch.cuda.is_available(), log_with=trackers or None, project_dir=str(run.path),
                      **plugins)
    enable_on_cpu(acc, plugins)
    if trackers:
        acc.init_trackers(run.tb.name)
    return acc


def train_from_config(config_path, overrides=None, run_dir=None, overwrite=False) -> Path:
    cfg = load_config(config_path, overrides)
    run_dir = Path(run_dir) if run_dir else Path(cfg.output_dir) / cfg.name
    return train(cfg, run_dir, overwrite=overwrite, base_dir=config_base_dir(config_path))


def resume_run(run_dir) -> Path:
    run = RunFolder(run_dir)
    if not run.is_run():
        raise RunError(f"{run.path}: not a quill run folder (no config.yaml)")
    cfg = load_config(run.config)
    return train(cfg, run.path, resume=True)


def run_demo(config=None, overrides=None, run_dir="runs/demo") -> Path:
    """The embedded default: offline, SmolLM2-135M, Gutenberg passages then synthesized instructions."""
    path = Path(config) if config else packaged_config("demo")
    cfg = load_config(path, overrides)
    t0 = time.perf_counter()
    out = train(cfg, Path(run_dir), overwrite=True, base_dir=Path.cwd(), demo=True)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; run folder: {out}")
    print(f"next: quill eval {out}   |   quill chat {out}   |   quill serve {out}")
    return out


def train(cfg: PipelineConfig, run_dir: Path, overwrite=False, resume=False, base_dir: Path | None = None,
          demo: bool = False) -> Path:
    require_quantization(cfg.stages)  # adapter.quantize without bitsandbytes: a one-line error before anything
    strategy = launch_strategy(cfg)
    run = RunFolder(run_dir)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0 and not resume and run.path.exists() and any(run.path.iterdir()):
        if not overwrite and not run.unstarted():
            raise RunError(f"{run.path}: run folder exists; pass --overwrite to replace it or "
                           f"`quill resume {run.path}` to continue it")
        if not overwrite:
            print(f"{run.path}: replacing a run folder where no training had started (an earlier run failed "
                  f"before its first step)")
        with run.lock():
            shutil.rmtree(run.path)
    run.path.mkdir(parents=True, exist_ok=True)
    lock = run.lock().acquire() if rank0 else None
    try:
        accelerator = make_accelerator(cfg, run, strategy)
        main = accelerator.is_main_process
        writer = writes_copy(run, accelerator, fresh=not resume)  # this disk's copy of the run (train.nodes)
        if writer and not resume:
            atomic_write_text(run.config, dump_config(cfg))
        prepared = _prepare_all(cfg, run, base_dir or Path.cwd(), accelerator, resume, writer)
        model, tokenizer, template = models.load_base(cfg.model)
        summary = share(run.summary() if resume and main else {}, accelerator)  # the main process's record
        summary.setdefault("stages", {})
        summary.update({"model": cfg.model.name, "stage_order": [s.name for s in cfg.stages]})
        if main and not summary.get("samples_base") and (demo or cfg.eval.prompts):
            summary["samples_base"] = sample_prompts(model, tokenizer, template, cfg.eval.prompts, cfg.generation)
        continuing = False  # True while the previous stage's adapter is being continued (merge: false)
        for i, stage in enumerate(cfg.stages):
            done = summary["stages"].get(stage.name, {}).get("complete")
            if done:
                model, continuing = _restore_after(run, stage, model)
                continue
            model, continuing, result = _run_stage(cfg, stage, model, tokenizer, template, prepared[stage.name],
                                                   accelerator, run, resume, continuing, writer)
            summary["stages"][stage.name] = result
            if main:
                run.update_summary(**summary)
                _print_stage(stage.name, result)
        if main:
            poet = sample_prompts(model, tokenizer, template, cfg.eval.prompts, cfg.generation)
            summary["samples"] = poet
            summary["complete"] = True
            run.update_summary(**summary)
            _print_samples(summary.get("samples_base", {}), poet)
        accelerator.wait_for_everyone()
        accelerator.end_training()
    finally:
        if lock:
            lock.release()
    return run.path


def _prepare_all(cfg, run, base_dir, accelerator, resume, writer: bool) -> dict:
    """Data for every stage, prepared once for each copy of the run folder (by its ``writer``: the main process,
    or a machine's first process where the machine has a disk of its own) and saved; every process reads it.

    The stages share one held-out set (``prepare_stages``): on resume, stages whose data was saved are
    loaded, not re-prepared, and the stages still to prepare keep none of their val/test poems in train."""
    if writer:
        saved = {s.name for s in cfg.stages if resume and run.data_ready(s.name)}
        todo = [s for s in cfg.stages if s.name not in saved]
        if todo:
            others = [load_prepared(run.data(s.name)) for s in cfg.stages if s.name in saved]
            prepared = prepare_stages(todo, base_dir, others=others)
            for stage in todo:  # in config order
                prep = prepared[stage.name]
                save_prepared(prep, run.data(stage.name))
                rep = prep.report
                print(f"[{stage.name}] data: {rep.get('rows_in')} rows in, {rep.get('rows_out')} kept "
                      f"(dropped: {rep.get('dropped') or 'none'}), splits {rep.get('splits')}")
    accelerator.wait_for_everyone()
    return {stage.name: load_prepared(run.data(stage.name)) for stage in cfg.stages}


def _run_stage(cfg, stage, model, tokenizer, template, prepared, accelerator, run, resume, continuing, writer):
    tc = stage.train
    amp = resolve_precision(tc.precision, accelerator.device)
    # frozen base weights can live in the low precision; trained weights stay fp32 (full fine-tuning: autocast)
    model = model.to(accelerator.device, dtype=amp if stage.adapter.trains_adapter else torch.float32)
    torch.manual_seed(tc.seed)
    if not continuing:
        model = models.apply_adapter(model, stage.adapter)
        release_freed_memory(accelerator.device)  # QLoRA: the full-precision weights it quantised go back now
    kind, dpo = prepared.kind, stage.dpo if stage.kind == "dpo" else None
    train_enc = encode_stage_split(kind, prepared.splits["train"], tokenizer, template, tc, dpo)
    if not train_enc.sequences:
        raise RunError(f"stage {stage.name}: no training examples left after tokenizing "
                       f"(skipped: {dict(train_enc.skipped)})")
    loaders = {split: build_loader(kind, prepared.splits[split], tokenizer, template, tc, dpo=dpo)
               for split in ("val", "test") if prepared.splits.get(split)}
    if dpo is not None:  # the frozen reference: the model as it enters the stage, once for every pair
        encs = {"train": train_enc, **{name: loader.encoded for name, loader in loaders.items()}}
        main = accelerator.is_main_process

        def compute(name, enc):
            reference_logps(model, enc, pad_id_of(tokenizer), tc.micro_batch, accelerator.device,
                            lambda: torch.autocast(accelerator.device.type, dtype=amp, enabled=amp != torch.float32),
                            desc=f"{stage.name} reference {name}" if main else None)
        how = cached_reference_logps(run.reference_logps(stage.name), encs, compute, write=writer)
        if main:
            print(f"[{stage.name}] reference log-probs {how} ({run.reference_logps(stage.name)})")
            note_tokenized(run.data(stage.name), {name: {"pairs": len(e.sequences), "skipped": dict(e.skipped),
                                                         "truncated": dict(e.truncated)} for name, e in encs.items()})
    if accelerator.is_main_process:
        unit = "pairs" if dpo is not None else "sequences"
        print(f"[{stage.name}] {stage.kind} on {len(prepared.splits['train'])} examples → "
              f"{len(train_enc.sequences)} {unit}, {train_enc.tokens:,} tokens "
              f"({train_enc.loss_tokens:,} {'pairs' if dpo else 'tokens'} with loss; truncated: "
              f"{dict(train_enc.truncated) or 'none'}); precision {str(amp).removeprefix('torch.')}")
    inputs = StageInputs(stage.name, tc, train_enc, loaders.get("val"), loaders.get("test"), pad_id_of(tokenizer),
                         attention=cfg.model.attn_implementation,
                         samples=eval_samples(cfg, model, tokenizer, template),  # every process: FSDP gathers for it
                         loss_module=(lambda m: DPOLoss(m, dpo)) if dpo is not None else None)
    torch.manual_seed(tc.seed + 1)
    result = fit(model, inputs, accelerator, run, resume=resume)
    result.update({"kind": stage.kind, "complete": True, "skipped_examples": dict(train_enc.skipped),
                   **({"truncated": dict(train_enc.truncated)} if dpo is not None else {})})
    lora = stage.adapter.trains_adapter
    if writer:  # each copy of the run folder gets the stage's model (a resume restores completed stages from it)
        if lora:
            models.save_adapter(run.adapter_dir(stage.name), model)
        to_save = models.merge_adapter(copy.deepcopy(model) if lora and not stage.adapter.merge else model) \
            if lora else model
        models.save_model(run.model_dir(stage.name), to_save, tokenizer, template, cfg.generation)
        if lora and stage.adapter.merge:
            model = to_save
    accelerator.wait_for_everyone()
    if lora and stage.adapter.merge and not writer:
        model = models.merge_adapter(model)
    if writer:  # the stage is saved whole: its resume state is no longer needed
        shutil.rmtree(run.checkpoint(stage.name), ignore_errors=True)
    return model, lora and not stage.adapter.merge, result


def _restore_after(run, stage, model):
    """On resume: the weights a completed stage left (merged model, or base + its adapter to continue)."""
    if stage.adapter.trains_adapter and not stage.adapter.merge:
        return models.load_adapter(model, run.adapter_dir(stage.name), trainable=True), True
    loaded, _tok, _tpl, _gen = models.load_checkpoint(run.model_dir(stage.name))
    return loaded, False


def _print_stage(name, r):
    before, after = r.get("val_loss_before"), r.get("val_loss_after")
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    test = f", test {r['test_loss']:.4f}" if r.get("test_loss") is not None else ""
    print(f"[{name}] done: val loss {fmt(before)} → {fmt(after)}{test}; train {r['train_loss']:.4f}; "
          f"{r['steps']} steps, {r['tokens']:,} tokens in {r['wall_s']:.0f} s ({r['tokens_per_s']:,.0f} tokens/s)")


def _print_samples(base: dict, poet: dict) -> None:
    for prompt, text in poet.items():
        print(f"\n=== {prompt}")
        if prompt in base:
            print(f"--- base model:\n{base[prompt].strip()}")
        print(f"--- poet:\n{text.strip()}")
