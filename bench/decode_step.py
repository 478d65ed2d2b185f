"""One batched decode step, with the model's linears as ``F.linear`` against ``decoding/matmul.py``'s choice.

For each batch size M of ``--rows``: a cache holding a ``--context``-token prompt per row, then one-token steps
(the step's key/values cropped after each, so every step sees the same cache), ``--rounds`` rounds of 3 steps
each way, interleaved; medians in ms. Run: ``python bench/decode_step.py`` (``--model runs/demo/sft/model``
for a trained poet; the default is the smollm2-135m preset).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from quill.decoding.kvcache import decode_cache
from quill.decoding.matmul import oriented_linears
from quill.models import load_for_inference


def step_ms(model, rows: int, context: int, rounds: int) -> tuple[float, float]:
    torch.manual_seed(0)
    vocab = model.get_output_embeddings().weight.shape[0]
    cache = decode_cache(model)
    model(input_ids=torch.randint(0, vocab, (rows, context)), cache=cache, use_cache=True, logits_to_keep=1)
    token = torch.randint(0, vocab, (rows, 1))

    def step() -> float:
        t = time.perf_counter()
        model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
        cache.crop(-1)
        return time.perf_counter() - t
    plain, oriented = [], []
    for _ in range(rounds):
        plain += [step() for _ in range(3)]
        with oriented_linears(model):
            oriented += [step() for _ in range(3)]
    return statistics.median(plain) * 1e3, statistics.median(oriented) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", default="1,4,16,48,96")
    ap.add_argument("--context", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    model = load_for_inference(args.model).model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| rows | F.linear ms | oriented ms | speed-up |\n| --- | --- | --- | --- |")
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            a, b = step_ms(model, rows, args.context, args.rounds)
            print(f"| {rows} | {a:.0f} | {b:.0f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
