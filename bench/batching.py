"""The eval suite's sampling, static batches against continuous batching, on one model.

Decodes every (prompt, seed) of the suite (24 prompts x ``--seeds``) with the reference's sampling settings,
the way ``quill eval`` does (``quill.evaluate.sampling``), and prints seconds and tokens/s per setting:
``static24`` cuts the requests into batches of 24 that each run until their slowest row ends;
a plain number ``N`` decodes N rows at a time with continuous batching (a finished row's slot takes the
next request). Run: ``python bench/batching.py runs/demo/sft/model --settings static24,24,48``
(``--form`` for form-aware decoding).
"""
from __future__ import annotations

import argparse
import time

from quill.evaluate.sampling import Request, prompt_ids, request_params, sample_requests
from quill.evaluate.suite import load_suite
from quill.decoding.engine import Engine
from quill.models import load_for_inference

SETTINGS = dict(temperature=0.7, top_p=0.95, repetition_penalty=1.1, max_new_tokens=96)


def static(loaded, requests: list[Request], size: int) -> int:
    engine = Engine(loaded.model, loaded.tokenizer, loaded.template, fast=False)
    tokens = 0
    for start in range(0, len(requests), size):
        chunk = requests[start:start + size]
        results = engine.generate_batch([prompt_ids(loaded.tokenizer, loaded.template, r.prompt, r.mode) for r in chunk],
                                        [request_params(r, SETTINGS) for r in chunk],
                                        prompt_texts=[r.prompt for r in chunk])
        tokens += sum(len(r.token_ids) for r in results)
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model folder (e.g. runs/demo/sft/model)")
    ap.add_argument("--settings", default="static24,24,48")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--form", action="store_true")
    args = ap.parse_args()
    loaded = load_for_inference(args.model)
    requests = [Request(p.prompt, p.mode, seed=1000 * i + j, form=args.form)
                for i, p in enumerate(load_suite().prompts) for j in range(args.seeds)]
    for setting in args.settings.split(","):
        t = time.perf_counter()
        if setting.startswith("static"):
            tokens = static(loaded, requests, int(setting[len("static"):]))
        else:
            tokens = sum(s.new_tokens for s in sample_requests(loaded.model, loaded.tokenizer, loaded.template,
                                                                requests, batch_size=int(setting), **SETTINGS))
        dt = time.perf_counter() - t
        print(f"{setting:>9}: {dt:6.1f} s  {tokens} tokens  {tokens / dt:6.1f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
