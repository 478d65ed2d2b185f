"""Training throughput: quill's loop against a plain ``transformers.Trainer`` + ``peft`` baseline.

Same model, same poems, the reference's LoRA and batch (r 16, alpha 32, all-linear, dropout 0.05 unless
``--lora-dropout``; micro-batch 2, gradient accumulation 4), sequence length 512, the same number of optimizer
steps. Each side runs in its own
subprocess (so peak-memory high-water marks are separate), back to back, ``--rounds`` times interleaved
(quill, baseline, quill, baseline, ...); the table shows medians.

- quill: ``quill.train.loop.fit`` with quill's defaults (``precision: auto``, packing, ``compile``: see
  ``--compile``), the model prepared exactly as ``quill.train.pipeline`` prepares it (frozen weights in the
  training precision, LoRA applied).
- baseline: what the Hugging Face docs lead a user to write: tokenize with truncation to max_length,
  ``DataCollatorForLanguageModeling(mlm=False)`` (pads to the longest in the batch), ``Trainer`` defaults
  (fp32 unless ``--baseline-bf16`` adds a bf16=True run), ``report_to=[]``.

Useful tokens are the non-padding tokens a step trains on. The first ``--warmup`` optimizer steps are not
timed. Run: ``python bench/train.py`` (``--help`` for options).

The machine's ceiling, measured in the same run (its own subprocess, first): the fp32 GEMM rate of this CPU (or
GPU) at the model's own shapes: for every block matrix and the fused loss's vocabulary chunk, the forward product
(``micro_batch × seq_len`` rows) and the input-gradient product, each timed best of 3 after a warm-up in both
orientations (``x @ W.T`` and ``(W @ x.T).T``; the faster counts), combined
in proportion to their FLOPs in a token. The FLOPs a token costs are ``quill.train.flops.token_flops`` (tested
against torch's FLOP counter); ``ceiling tok/s`` = rate / FLOPs per token, and each side's ``MFU`` is its useful
tokens/s over that ceiling (adapter and attention FLOPs counted at the same rate as the big products).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchRun, envelope, loadavg, median, peak_rss_gb, read_texts, resolve_data, table, write_result  # noqa: E402

# the reference's LoRA (quill/configs/*-reference.yaml); --lora-dropout 0 gives quill's (and peft's) default
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targets": "all-linear"}


def poem_pool(args) -> list[str]:
    """The same poems for every side: ``--pool`` poems drawn with a fixed seed from the file."""
    texts = read_texts(resolve_data(args.data))
    random.Random(0).shuffle(texts)
    return texts[: args.pool]


def _device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _peak_memory_gb() -> float:
    import torch
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return peak_rss_gb()


def run_quill(args, texts) -> dict:
    import torch
    from accelerate import Accelerator
    from quill import models
    from quill.config import AdapterConfig, ModelConfig, TrainConfig
    from quill.train.batches import encode_split, epoch_batches, pad_id_of
    from quill.train.loop import StageInputs, fit, resolve_precision

    total = args.warmup + args.steps
    tc = TrainConfig(micro_batch=args.micro_batch, grad_accum=args.grad_accum, block_size=args.seq_len,
                     max_steps=total, precision=args.precision, log_every=1, packing=not args.no_packing,
                     compile=args.compile)
    model, tokenizer, template = models.load_base(ModelConfig(name=args.model))
    acc = Accelerator(cpu=not torch.cuda.is_available())
    amp = resolve_precision(tc.precision, acc.device)
    model = model.to(acc.device, dtype=amp)          # as pipeline._run_stage does for a LoRA stage
    torch.manual_seed(tc.seed)
    model = models.apply_adapter(model, AdapterConfig(**{**LORA, "dropout": args.lora_dropout}))
    t0 = time.perf_counter()
    enc = encode_split("poems", [{"text": t} for t in texts], tokenizer, template, tc.block_size, tc.packing, tc.seed)
    encode_s = time.perf_counter() - t0
    run = BenchRun()
    inputs = StageInputs("bench", tc, enc, None, None, pad_id_of(tokenizer))
    t_fit = time.perf_counter()
    fit(model, inputs, acc, run)
    # the micro-batches each step trained on, in fit's order, to count useful tokens per step
    batches = epoch_batches(enc, tc.micro_batch, tc.seed, 0, True, tc.packing)
    per_step = [sum(len(enc.sequences[i]) for b in batches[k * tc.grad_accum:(k + 1) * tc.grad_accum] for i in b)
                for k in range(total)]
    slots = [sum(max(len(enc.sequences[i]) for i in b) * len(b)
                 for b in batches[k * tc.grad_accum:(k + 1) * tc.grad_accum]) for k in range(total)]
    times = [t_fit, *run.step_times]
    return _summary("quill", per_step, slots, [b - a for a, b in zip(times, times[1:])], args,
                    precision=str(amp).removeprefix("torch."), encode_s=round(encode_s, 2),
                    sequences=len(enc.sequences))


def run_baseline(args, texts, bf16: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments
    from quill import models
    from quill.config import ModelConfig

    model, tokenizer, _ = models.load_base(ModelConfig(name=args.model))   # fp32 on CPU: from_pretrained's default
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=args.lora_dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    ds = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=args.seq_len), batched=True,
        remove_columns=["text"])
    counts = {"tokens": 0, "slots": 0}

    def count(_module, _args, kwargs):  # what each micro-batch really trains on
        if _module.training and kwargs.get("attention_mask") is not None:
            counts["tokens"] += int(kwargs["attention_mask"].sum())
            counts["slots"] += kwargs["attention_mask"].numel()
    model.register_forward_pre_hook(count, with_kwargs=True)
    marks: list[tuple[float, int, int]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append((time.perf_counter(), 0, 0))

        def on_step_end(self, *a, **k):
            marks.append((time.perf_counter(), counts["tokens"], counts["slots"]))

    total = args.warmup + args.steps
    targs = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="hf-bench-"), per_device_train_batch_size=args.micro_batch,
                              gradient_accumulation_steps=args.grad_accum, max_steps=total, learning_rate=1e-4,
                              logging_steps=10_000, save_strategy="no", report_to=[], bf16=bf16, seed=0,
                              use_cpu=not torch.cuda.is_available())  # Trainer asks for it with bf16 on CPU
    trainer = Trainer(model=model, args=targs, train_dataset=ds, callbacks=[Clock()],
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    d = lambda i: [b[i] - a[i] for a, b in zip(marks, marks[1:])]  # noqa: E731
    return _summary("baseline-bf16" if bf16 else "baseline", d(1), d(2), d(0), args,
                    precision="bf16 autocast" if bf16 else "fp32")


def _summary(side, tokens, slots, step_s, args, **extra) -> dict:
    w = args.warmup
    tok, sl, secs = sum(tokens[w:]), sum(slots[w:]), sum(step_s[w:])
    return {"side": side, "timed_steps": len(step_s[w:]), "useful_tokens": tok, "padding_pct": round(100 * (1 - tok / max(sl, 1)), 1),
            "step_s": round(median(step_s[w:]), 2), "useful_tok_s": round(tok / max(secs, 1e-9), 1),
            "peak_mem_gb": _peak_memory_gb(), "step_s_all": [round(s, 2) for s in step_s], **extra}


def run_ceiling(args) -> dict:
    """The GEMM rate at the model's shapes and the FLOPs of a training token (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from quill.config import AdapterConfig, ModelConfig
    from quill.train.flops import token_flops
    from quill.train.loss import CPU_CHUNK, GPU_CHUNK
    from quill.train.memory import model_shape, read_model_config
    shape = model_shape(read_model_config(ModelConfig(name=args.model)))
    adapter = AdapterConfig(r=LORA["r"], alpha=LORA["alpha"], targets=LORA["targets"])
    flops = token_flops(shape, adapter, args.seq_len, target_share=(args.seq_len - 1) / args.seq_len)
    device, rows = _device(), args.micro_batch * args.seq_len
    chunk = CPU_CHUNK if device.type == "cpu" else GPU_CHUNK

    def best(fn) -> float:
        fn()
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - t)
        return min(runs)
    products = [(m.fan_in, m.fan_out, rows, shape.layers) for m in shape.matrices()]
    products.append((shape.hidden, shape.vocab, chunk, rows / chunk))     # the loss: chunk after chunk
    total_flops = total_s = 0.0
    shapes = []
    for fan_in, fan_out, m, times in products:
        x, w = torch.randn(m, fan_in, device=device), torch.randn(fan_out, fan_in, device=device)
        g = torch.randn(m, fan_out, device=device)
        # the faster of the two orientations each product can run in (MKL's speed differs between them at
        # some shapes, e.g. the vocabulary chunk here): the ceiling is what this machine can do, not one call
        fwd = min(best(lambda: F.linear(x, w)), best(lambda: (w @ x.t()).t()))
        grad = min(best(lambda: g @ w), best(lambda: (w.t() @ g.t()).t()))
        work = 2 * m * fan_in * fan_out
        total_flops += 2 * work * times
        total_s += (fwd + grad) * times
        shapes.append({"m": m, "in": fan_in, "out": fan_out, "forward_gflops": round(work / fwd / 1e9, 1),
                       "input_grad_gflops": round(work / grad / 1e9, 1)})
    rate = total_flops / total_s
    return {"side": "ceiling", "gemm_gflops": round(rate / 1e9, 1), "flops_per_token": round(flops.total),
            "flops_terms": {k: round(v) for k, v in vars(flops).items()},
            "ceiling_tok_s": round(rate / flops.total, 1), "shapes": shapes, "dtype": "float32"}


def child(args) -> None:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side == "ceiling":
        print("RESULT " + json.dumps(run_ceiling(args) | {"threads": torch.get_num_threads()}), flush=True)
        return
    texts = poem_pool(args)
    load0 = loadavg()
    res = (run_quill(args, texts) if args.side == "quill"
           else run_baseline(args, texts, bf16=args.side == "baseline-bf16"))
    res.update(load_before=load0, load_after=loadavg(), threads=torch.get_num_threads())
    print("RESULT " + json.dumps(res), flush=True)


def _side(args, side: str, passthrough: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *passthrough, "--side", side], text=True,
                          stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.DEVNULL,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or not line:
        sys.exit(f"{side} failed (exit {proc.returncode}); rerun with --verbose\n{proc.stdout[-2000:]}")
    return json.loads(line[7:])


def parent(args) -> None:
    sides = ["quill", "baseline"] + (["baseline-bf16"] if args.baseline_bf16 else [])
    runs = []
    passthrough = [a for a in sys.argv[1:] if a != "--baseline-bf16"]
    ceiling = _side(args, "ceiling", passthrough)
    print(f"[ceiling] fp32 GEMM {ceiling['gemm_gflops']} GFLOP/s at the model's shapes; "
          f"{ceiling['flops_per_token'] / 1e6:.0f} MFLOP a token: {ceiling['ceiling_tok_s']} tokens/s", flush=True)
    for r in range(args.rounds):
        for side in sides:
            print(f"[round {r + 1}/{args.rounds}] {side} ...", flush=True)
            t = time.perf_counter()
            res = _side(args, side, passthrough) | {"round": r + 1, "wall_s": round(time.perf_counter() - t, 1)}
            print(f"  {res['useful_tok_s']:,.0f} useful tokens/s, step {res['step_s']} s, "
                  f"peak {res['peak_mem_gb']} GB, load {res['load_before']}", flush=True)
            runs.append(res)
    rows = []
    for side in sides:
        mine = [x for x in runs if x["side"] == side]
        rows.append({"side": side, "precision": mine[0]["precision"], "useful tok/s": median([x["useful_tok_s"] for x in mine]),
                     "step s": median([x["step_s"] for x in mine]), "padding %": mine[0]["padding_pct"],
                     "peak GB": max(x["peak_mem_gb"] for x in mine)})
        rows[-1]["MFU"] = round(rows[-1]["useful tok/s"] / ceiling["ceiling_tok_s"], 3)
    base = rows[1]["useful tok/s"]
    for row in rows:
        row["quill ×"] = round(rows[0]["useful tok/s"] / row["useful tok/s"], 2)
    print(f"\n{args.model}, micro-batch {args.micro_batch} × accumulation {args.grad_accum}, seq {args.seq_len}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, {args.rounds} round(s); load {loadavg()}\n")
    print(table(rows, ["side", "precision", "useful tok/s", "step s", "padding %", "peak GB", "quill ×", "MFU"]))
    result = envelope("train", settings={k: v for k, v in vars(args).items() if k not in ("side", "verbose", "out")},
                      table=rows, ratio_vs_baseline=round(rows[0]["useful tok/s"] / base, 2), ceiling=ceiling,
                      mfu={row["side"]: row["MFU"] for row in rows}, runs=runs,
                      load_end=loadavg())
    write_result("train", result, args.out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="preset, hub id or folder")
    p.add_argument("--data", default=None, help="jsonl(.gz) with a text field (default ../shared/data/pd_poems.jsonl.gz)")
    p.add_argument("--pool", type=int, default=2000, help="poems drawn (seed 0) for both sides")
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--precision", default="auto", help="quill's train.precision (auto: its default)")
    p.add_argument("--compile", default="on", choices=["on", "off", "auto"],
                   help="quill's train.compile (default on: what auto picks for a stage of 64+ micro-batches, "
                        "which a bench run of a few steps is not); the compile time falls in the warm-up step")
    p.add_argument("--lora-dropout", type=float, default=LORA["dropout"],
                   help="both sides' LoRA dropout (default: the reference's 0.05; 0: quill's and peft's default)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved repetitions (quill, baseline, ...)")
    p.add_argument("--no-packing", action="store_true",
                   help="quill with train.packing: false (length-grouped rows, long poems split, no attention mask)")
    p.add_argument("--baseline-bf16", action="store_true", help="also run the baseline with bf16=True")
    p.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/train.json)")
    p.add_argument("--verbose", action="store_true", help="show the sides' own output")
    p.add_argument("--side", choices=["ceiling", "quill", "baseline", "baseline-bf16"], help=argparse.SUPPRESS)
    args = p.parse_args()
    child(args) if args.side else parent(args)


if __name__ == "__main__":
    main()
