"""One prepared GPU check: quill's loop against HF ``Trainer`` + ``peft`` on exact model shapes, plus generation.

Random-initialised models of the exact shapes (no weights can be downloaded on the device machine):
DeepSeek-coder-1.3B (Llama: hidden 2048, 24 layers, 16 heads, intermediate 5504, vocab 32256) and
GPT-2 124M. LoRA r 16 / alpha 32 / dropout 0.05 on q and v (GPT-2: the fused ``c_attn``), seq 512, bf16.

- baseline: ``transformers.Trainer`` (bf16=True, report_to=[]) on poems truncated to 512 and padded to the
  longest in the batch (the collator does what ``DataCollatorForLanguageModeling(mlm=False)`` does; there is
  no tokenizer on the device);
- quill: ``quill.train.loop.fit`` on the same poems packed into 512-token blocks, model prepared as
  ``quill.train.pipeline`` does (frozen weights bf16, LoRA fp32, ``precision: auto``);
- generation: ``model.generate`` (greedy, 128 new tokens, batch 1) against quill's compiled decoder
  (``quill.decoding.fast.make_decoder``, greedy) on the same random bf16 model.

Poems: ``--data DIR`` holding ``poems.npz`` (token ids of real poems; make it here with
``python bench/gpu.py --export-data bench/gpu_data`` and send it with the device tool's ``carry``); absent,
random tokens with poem-like lengths. Useful (non-padding) tokens/s; MFU = tokens/s × (4·N + 2·N_lora +
12·layers·hidden·512) / 989e12 (H100/H200 bf16 dense peak): LoRA computes no weight gradients for the frozen
N, so a token costs 2N forward and 2N for the input gradients, plus the attention over 512 positions (the
PaLM count). The quill rows: ``default`` is what ``train.compile: auto`` and ``attn_implementation: auto``
pick on a GPU (compiled blocks; flex attention for packed Llama blocks, SDPA for GPT-2), ``eager`` turns
both off. On the device: ``PYTHONPATH=src python3 bench/gpu.py --data bench/gpu_data``;
here: ``python bench/gpu.py --smoke`` (tiny shapes on CPU, seconds). JSON goes to bench/results/gpu.json and $OUT.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from _common import envelope, median, table, write_result  # noqa: E402

os.environ.setdefault("TQDM_DISABLE", "1")
PEAK_FLOPS = 989e12
PROFILE = False  # --profile: torch.profiler around quill's fit, top kernels printed and saved
TRAIN_DEFAULTS = dict(micro_batch=2, grad_accum=4, epochs=1.0, max_steps=None, lr=1e-4, schedule="cosine", warmup=0.03,
                      weight_decay=0.0, max_grad_norm=1.0, block_size=512, packing=True, precision="auto", seed=0,
                      eval_every=None, eval_batches=None, save_every=None, early_stopping_patience=None, log_every=1,
                      compile="auto")


def shapes(smoke: bool) -> dict:
    from transformers import GPT2Config, LlamaConfig
    if smoke:
        return {"llama-tiny": (LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                           vocab_size=512, max_position_embeddings=1024), ["q_proj", "v_proj"], [(2, 2)]),
                "gpt2-tiny": (GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=1024),
                              ["c_attn"], [(2, 2)])}
    return {"deepseek-coder-1.3b shape": (LlamaConfig(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                                                      num_key_value_heads=16, intermediate_size=5504, vocab_size=32256,
                                                      max_position_embeddings=4096, rope_theta=100000.0),
                                          ["q_proj", "v_proj"], [(2, 4), (16, 1)]),
            "gpt2-124m shape": (GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
                                ["c_attn"], [(2, 4), (32, 1), (64, 1)])}


def load_poems(data: str | None, n: int, seed: int = 0) -> tuple[list[list[int]], str]:
    path = Path(data or "bench/gpu_data") / "poems.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        ids, off = z["ids"], z["offsets"]
        return [ids[a:b].tolist() for a, b in zip(off[:-1], off[1:])][:n], f"real poems ({path})"
    rng = np.random.default_rng(seed)  # poem-like lengths: median ~220 tokens, heavy tail
    lengths = np.clip(rng.lognormal(np.log(220), 1.0, n), 8, 4000).astype(int)
    return [rng.integers(3, 32000, k).tolist() for k in lengths], "random tokens, poem-like lengths"


def export_data(folder: str, n: int) -> None:
    """Tokenize real poems here (GPT-2 tokenizer, EOS appended) into ``folder/poems.npz``."""
    from _common import read_texts, resolve_data
    from quill.models import load_tokenizer
    tok = load_tokenizer("tiny-gpt2")
    texts = read_texts(resolve_data(None))
    np.random.default_rng(0).shuffle(texts)
    seqs = [x + [tok.eos_token_id] for x in tok(texts[:n], add_special_tokens=False)["input_ids"]]
    Path(folder).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(Path(folder) / "poems.npz", ids=np.concatenate(seqs).astype(np.int32),
                        offsets=np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64))
    print(f"wrote {folder}/poems.npz: {len(seqs)} poems, {sum(map(len, seqs)):,} tokens")


def build(cfg, targets, dtype, device):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a 1.3B model's CPU init alone takes tens of seconds
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM",
                      fan_in_fan_out=cfg.model_type == "gpt2")
    return get_peft_model(model, lora)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_quill(cfg, targets, poems, mb, accum, steps, warmup, device, variant="default") -> dict:
    from accelerate import Accelerator
    from quill.data.pack import Example, pack_examples
    from quill.train.batches import Encoded, epoch_batches
    from quill.train.loop import StageInputs, fit, resolve_precision
    from train import _Run
    eager = variant == "eager"
    tc = SimpleNamespace(**{**TRAIN_DEFAULTS, "micro_batch": mb, "grad_accum": accum, "max_steps": warmup + steps,
                            "compile": "off" if eager else "auto"})
    amp = resolve_precision(tc.precision, device)
    model = build(cfg, targets, amp, device)
    vocab = cfg.vocab_size
    enc = Encoded(pack_examples([Example([t % vocab for t in p], [t % vocab for t in p]) for p in poems], 512, 0))
    run = _Run()
    t0 = time.perf_counter()
    prof = contextlib.nullcontext()
    if PROFILE:
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        prof = torch.profiler.profile(activities=acts)
    with prof:
        out = fit(model, StageInputs("gpu", tc, enc, None, None, 0, attention="sdpa" if eager else "auto"),
                  Accelerator(cpu=device.type == "cpu"), run)
    if PROFILE:
        key = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        text = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
        print(text)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], f"profile_{cfg.model_type}_{mb}x{accum}.txt").write_text(text)
    batches = epoch_batches(enc, mb, 0, 0, True, True)
    tokens = [sum(len(enc.sequences[i]) for b in batches[k * accum:(k + 1) * accum] for i in b) for k in range(warmup + steps)]
    times = [t0, *run.step_times]
    secs = [b - a for a, b in zip(times, times[1:])]
    return {**_result(f"quill {variant}", tokens, secs, warmup, model, cfg), "attention": out.get("attention"),
            "compiled blocks": out.get("compiled_blocks"), "warm-up s": round(sum(secs[:warmup]), 1)}


def run_baseline(cfg, targets, poems, mb, accum, steps, warmup, device) -> dict:
    import tempfile
    from transformers import Trainer, TrainerCallback, TrainingArguments
    model = build(cfg, targets, torch.bfloat16 if device.type == "cuda" else torch.float32, device)
    vocab = cfg.vocab_size
    rows = [{"input_ids": [t % vocab for t in p[:512]]} for p in poems]

    def collate(batch):  # what DataCollatorForLanguageModeling(mlm=False) does: pad to the longest, -100 on padding
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(batch):
            ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, :len(r["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    count = {"tokens": 0}
    model.register_forward_pre_hook(lambda m, a, k: count.__setitem__("tokens", count["tokens"] + int(k["attention_mask"].sum()))
                                    if m.training else None, with_kwargs=True)
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            sync()
            marks.append((time.perf_counter(), 0))

        def on_step_end(self, *a, **k):
            sync()
            marks.append((time.perf_counter(), count["tokens"]))
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=mb, gradient_accumulation_steps=accum,
                             max_steps=warmup + steps, learning_rate=1e-4, bf16=device.type == "cuda", report_to=[],
                             save_strategy="no", logging_steps=10_000, use_cpu=device.type == "cpu", seed=0)
    Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()]).train()
    d = lambda i: [b[i] - a[i] for a, b in zip(marks, marks[1:])]  # noqa: E731
    return _result("HF Trainer + peft", d(1), d(0), warmup, model, cfg)


def flops_per_token(model, cfg, seq: int = 512) -> float:
    """LoRA training: 2N forward + 2N input gradients, 6 per trained (LoRA) weight, attention (PaLM)."""
    n = sum(p.numel() for p in model.parameters())
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    return 4 * n + 2 * n_lora + 12 * layers * hidden * seq


def _result(side, tokens, secs, warmup, model, cfg) -> dict:
    n = sum(p.numel() for p in model.parameters())
    tok_s = sum(tokens[warmup:]) / max(sum(secs[warmup:]), 1e-9)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"side": side, "useful tok/s": round(tok_s, 1), "step s": round(median(secs[warmup:]), 3),
            "MFU %": round(100 * flops_per_token(model, cfg) * tok_s / PEAK_FLOPS, 1),
            "peak GiB": peak and round(peak, 1), "params": n}


def run_generation(cfg, device, new_tokens: int, compile_: bool) -> list[dict]:
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.bfloat16).eval()
    ids = torch.randint(3, min(1000, cfg.vocab_size), (1, 32), device=device)
    out = []
    with torch.inference_mode():
        for _ in range(2):  # warm-up, then timed
            sync()
            t = time.perf_counter()
            model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, pad_token_id=0)
            sync()
        out.append({"engine": "transformers generate", "tok/s": round(new_tokens / (time.perf_counter() - t), 1)})
        if compile_:
            try:
                out.append(_quill_decode(model, ids, new_tokens))
            except Exception as err:  # noqa: BLE001
                out.append({"engine": "quill compiled decoder", "error": f"{type(err).__name__}: {err}"[:300]})
    return out


def _quill_decode(model, ids, new_tokens: int) -> dict:
    """quill's compiled decoder (static cache + torch.compile), greedy: compile time reported apart."""
    from quill.decoding.fast import make_decoder
    with torch.inference_mode():
        t = time.perf_counter()
        dec = make_decoder(model, 1024, "compile")
        setup = time.perf_counter() - t
        for _ in range(2):  # warm-up, then timed
            sync()
            t = time.perf_counter()
            logits = dec.prefill(ids, ids.shape[1] + new_tokens)
            for _ in range(new_tokens - 1):
                logits = dec.step(int(logits.argmax(-1)))
            sync()
    return {"engine": f"quill {dec.kind} decoder", "tok/s": round((new_tokens - 1) / (time.perf_counter() - t), 1),
            "setup s": round(setup, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, few steps: checks the script runs (CPU ok)")
    p.add_argument("--data", default=None, help="folder with poems.npz (default bench/gpu_data; else random tokens)")
    p.add_argument("--export-data", metavar="DIR", help="write DIR/poems.npz from ../shared poems here, then exit")
    p.add_argument("--poems", type=int, default=4000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--no-compile", action="store_true", help="skip quill's compiled decoder")
    p.add_argument("--batches", nargs="*", metavar="MODEL=MBxACC,...",
                   help="override the batch shapes per model, e.g. deepseek=32x1,64x1 gpt2=128x1 (first word of "
                        "the model's name)")
    p.add_argument("--no-eager", action="store_true", help="skip the 'quill eager' rows")
    p.add_argument("--no-generate", action="store_true", help="skip generation")
    p.add_argument("--no-train", action="store_true", help="skip training")
    p.add_argument("--profile", action="store_true", help="profile quill's runs (top kernels to stdout and $OUT)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    global PROFILE
    PROFILE = args.profile
    if args.export_data:
        return export_data(args.export_data, args.poems)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps, warmup, new = (2, 1, 8) if args.smoke else (args.steps, args.warmup, args.new_tokens)
    poems, origin = load_poems(args.data, 60 if args.smoke else args.poems)
    t_all = time.perf_counter()
    train_rows, gen_rows = [], []

    def save(final=False):  # after every row: a run cut off at the device's time limit keeps what it measured
        name = "gpu_smoke" if args.smoke else "gpu"
        write_result(name, envelope("gpu", data=origin, train=train_rows, generate=gen_rows, complete=final,
                                    total_s=round(time.perf_counter() - t_all, 1)), args.out)

    override = {k: [tuple(int(x) for x in b.split("x")) for b in v.split(",")]
                for k, v in (a.split("=") for a in args.batches or [])}
    for name, (cfg, targets, batches) in shapes(args.smoke).items():
        if args.batches or args.no_train:
            batches = [] if args.no_train else override.get(name.split("-")[0], [])
        for i, (mb, accum) in enumerate(batches):
            eager = [("eager", run_quill)] if i == 0 and not args.no_eager else []
            sides = [("baseline", run_baseline), ("default", run_quill)] + eager
            for variant, fn in sides:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                extra = {"variant": variant} if fn is run_quill else {}
                try:
                    r = fn(cfg, targets, poems, mb, accum, steps, warmup, device, **extra)
                except Exception as err:  # noqa: BLE001 - one failing side must not cost the whole device run
                    r = {"side": f"{fn.__name__} {variant}", "error": f"{type(err).__name__}: {err}"[:300],
                         "useful tok/s": 0.0}
                train_rows.append({"model": name, "batch": f"{mb}×{accum}", **r})
                if fn is run_quill:
                    base = next(x["useful tok/s"] for x in train_rows[::-1] if x["side"] == "HF Trainer + peft"
                                or x["side"].startswith("run_baseline"))
                    train_rows[-1]["quill ×"] = round(r["useful tok/s"] / base, 2) if base else None
                print({k: v for k, v in train_rows[-1].items() if k != "params"}, flush=True)
                save()
        for g in [] if args.no_generate else run_generation(cfg, device, new, not args.no_compile and not args.smoke):
            gen_rows.append({"model": name, **g})
            print(gen_rows[-1], flush=True)
            save()
    print(f"\n{origin}; device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}; "
          f"{time.perf_counter() - t_all:.0f} s\n")
    print(table(train_rows, ["model", "batch", "side", "useful tok/s", "step s", "MFU %", "peak GiB", "quill ×",
                             "attention", "warm-up s"]))
    print()
    print(table(gen_rows, ["model", "engine", "tok/s", "setup s"]))
    save(final=True)


if __name__ == "__main__":
    main()
