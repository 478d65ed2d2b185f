"""QLoRA's memory saving: LoRA on the full-precision base vs LoRA on an nf4 / int8 base (``adapter.quantize``).

Each variant runs in its own subprocess (separate high-water marks): load the base, cast it as
``pipeline._run_stage`` does, apply the adapter (quantising the base first for nf4 / int8), then a few
optimizer steps of ``quill.train.loop.fit`` at the same batch. Reported per variant:

- ``linear_mb_before`` / ``linear_mb_after``: bytes of the base's linear weights (not the embeddings / output
  layer, not the adapter) before and after quantisation (nf4: packed data + double-quantised scales);
- ``rss_loaded_mb`` / ``rss_model_mb``: resident memory once the full-precision base is loaded, and once the
  model is ready to train (quantised, adapter applied, freed memory handed back with ``malloc_trim``);
- ``peak_train_mb``: the resident high-water mark of the training steps alone (reset by writing 5 to
  ``/proc/self/clear_refs`` once the model is ready);
- ``peak_process_mb``: ``getrusage(RUSAGE_SELF).ru_maxrss`` of the whole process (includes loading the
  full-precision base before it is quantised);
- ``step_s``: the median optimizer step (bitsandbytes de-quantises every weight in each forward and backward).

Run: ``python bench/qlora_memory.py`` (``--help`` for options). Needs bitsandbytes (``pip install 'quill[qlora]'``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchRun, envelope, median, read_texts, resolve_data, table, write_result  # noqa: E402

VARIANTS = {"lora": None, "qlora-nf4": "nf4", "qlora-int8": "int8"}


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child(args) -> dict:
    import torch
    from accelerate import Accelerator
    from quill import models
    from quill.config import AdapterConfig, ModelConfig, TrainConfig
    from quill.models.adapters import _linear_modules
    from quill.models.quantize import linear_weight_bytes
    from quill.train.batches import encode_split, pad_id_of
    from quill.train.fastpaths import release_freed_memory
    from quill.train.loop import StageInputs, fit, resolve_precision
    if args.threads:
        torch.set_num_threads(args.threads)
    quantize = VARIANTS[args.variant]
    texts = read_texts(resolve_data(args.data))
    random.Random(0).shuffle(texts)
    tc = TrainConfig(micro_batch=args.micro_batch, grad_accum=args.grad_accum, block_size=args.seq_len,
                     max_steps=args.steps, precision=args.precision, log_every=1, compile=args.compile, warmup=0)
    model, tokenizer, template = models.load_base(ModelConfig(name=args.model))
    acc = Accelerator(cpu=not torch.cuda.is_available())
    amp = resolve_precision(tc.precision, acc.device)
    model = model.to(acc.device, dtype=amp)  # as pipeline._run_stage does for an adapter stage
    rss_loaded = _rss_mb()
    before = linear_weight_bytes(model)
    n_linear = len(_linear_modules(model))
    torch.manual_seed(0)
    model = models.apply_adapter(model, AdapterConfig(r=16, alpha=32, targets="all-linear", quantize=quantize))
    after = linear_weight_bytes(model)
    adapter = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    enc = encode_split("poems", [{"text": t} for t in texts[: args.pool]], tokenizer, template, tc.block_size,
                       tc.packing, tc.seed)
    gc.collect()
    release_freed_memory(acc.device)  # what fit does after every micro-batch: the freed fp32 weights go back
    models_ready = _rss_mb()
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS: the peak below is the training steps'
        f.write("5")
    run = BenchRun()
    t0 = time.perf_counter()
    result = fit(model, StageInputs("bench", tc, enc, None, None, pad_id_of(tokenizer)), acc, run)
    times = [t0, *run.step_times]
    steps = [b - a for a, b in zip(times, times[1:])]
    return {"variant": args.variant, "quantize": quantize, "precision": str(amp).removeprefix("torch."),
            "linear_layers": n_linear, "linear_mb_before": round(before / 2**20, 1),
            "linear_mb_after": round(after / 2**20, 1), "adapter_mb": round(adapter / 2**20, 1),
            "rss_loaded_mb": rss_loaded, "rss_model_mb": models_ready, "peak_train_mb": _hwm_mb(),
            "peak_process_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "step_s": round(median(steps), 2), "step_s_all": [round(s, 2) for s in steps],
            "train_loss": round(result["train_loss"], 4), "threads": torch.get_num_threads()}


def parent(args) -> None:
    runs = []
    passthrough = sys.argv[1:]
    for variant in args.variants:
        print(f"{variant} ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, *passthrough, "--variant", variant], text=True,
                              stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.DEVNULL,
                              env={**os.environ, "TQDM_DISABLE": "1"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or not line:
            sys.exit(f"{variant} failed (exit {proc.returncode}); rerun with --verbose\n{proc.stdout[-2000:]}")
        res = json.loads(line[7:])
        print(f"  linear weights {res['linear_mb_before']} -> {res['linear_mb_after']} MB, model ready "
              f"{res['rss_model_mb']} MB, training peak {res['peak_train_mb']} MB, step {res['step_s']} s", flush=True)
        runs.append(res)
    cols = ["variant", "precision", "linear_mb_before", "linear_mb_after", "rss_loaded_mb", "rss_model_mb", "peak_train_mb",
            "peak_process_mb", "step_s", "train_loss"]
    print(f"\n{args.model}, LoRA r 16 all-linear, micro-batch {args.micro_batch} × accumulation {args.grad_accum}, "
          f"seq {args.seq_len}, {args.steps} steps, compile {args.compile}\n")
    print(table(runs, cols))
    write_result("qlora_memory", envelope("qlora_memory", settings={k: v for k, v in vars(args).items()
                                                                    if k not in ("variant", "verbose", "out")},
                                          runs=runs), args.out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="preset, hub id or folder")
    p.add_argument("--data", default=None, help="jsonl(.gz) with a text field (default ../shared/data/pd_poems.jsonl.gz)")
    p.add_argument("--pool", type=int, default=400, help="poems drawn (seed 0)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--precision", default="auto", help="train.precision (auto: fp32 on CPUs without AMX)")
    p.add_argument("--compile", default="off", choices=["on", "off", "auto"], help="train.compile")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/qlora_memory.json)")
    p.add_argument("--verbose", action="store_true", help="show the variants' own output")
    p.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(child(args)), flush=True)
    else:
        parent(args)


if __name__ == "__main__":
    main()
