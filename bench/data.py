"""Data path throughput: clean, split, tokenize and pack the 28.8k poems, then the same again from the cache.

Phases, through quill's own functions:
1. ``quill.data.prepare.prepare_stage_data`` (read, clean, dedupe, split) for a stage whose
   ``data.source`` is the poems file;
2. ``quill.train.batches.encode_split`` on the train split (tokenize, add EOS, best-fit packing into
   blocks of ``--block-size``) with the ``--model`` tokenizer;
3. the same two through ``quill.data.cache.cached`` twice in a fresh cache folder: a cold run (build +
   save) and a warm run (load only) — what a second training run over the same corpus costs.

Run: ``python bench/data.py`` (``--help`` for options). Target: < 60 s uncached on 2 cores.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import envelope, loadavg, peak_rss_gb, resolve_data, table, write_result  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="poems file (default ../shared/data/pd_poems.jsonl.gz)")
    p.add_argument("--model", default="smollm2-135m", help="whose tokenizer")
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from quill import models
    from quill.config import StageConfig
    from quill.data.cache import cached, load_sequences, save_sequences, source_fingerprint, tokenizer_fingerprint
    from quill.data.prepare import load_prepared, prepare_stage_data, save_prepared
    from quill.data.template import template_for
    from quill.train.batches import Encoded, encode_split

    src = resolve_data(args.data)
    stage = StageConfig.model_validate({"name": "dapt", "kind": "dapt",
                                        "data": {"source": str(src), "kind": "poems", "max_rows": args.max_rows},
                                        "train": {"block_size": args.block_size}})
    tc = stage.train
    tokenizer = models.load_tokenizer(args.model)
    template = template_for(tokenizer)
    load0 = loadavg()

    def prepare():
        return prepare_stage_data(stage, src.parent)

    def encode(prep):
        return encode_split(prep.kind, prep.splits["train"], tokenizer, template, tc.block_size, tc.packing, tc.seed)

    # --- 1+2: uncached, as quill runs today
    prep, t_prep = timed(prepare)
    enc, t_enc = timed(lambda: encode(prep))
    tokens = enc.tokens
    rows = [{"phase": "prepare (read, clean, dedupe, split)", "seconds": t_prep},
            {"phase": "tokenize + pack train split", "seconds": t_enc},
            {"phase": "total, uncached", "seconds": round(t_prep + t_enc, 2)}]

    # --- 3: through the cache, cold then warm, in a fresh folder
    root = Path(tempfile.mkdtemp(prefix="quill-data-cache-"))
    key = {"source": source_fingerprint(src), "data": stage.data.model_dump(mode="json")}
    enc_key = {**key, "split": "train", "tokenizer": tokenizer_fingerprint(tokenizer), "template": template.to_dict(),
               "block_size": tc.block_size, "packing": tc.packing, "seed": tc.seed}

    def save_enc(e, folder):
        save_sequences(e.sequences, folder, {"skipped": dict(e.skipped), "examples": e.examples})

    def load_enc(folder):
        seqs, meta = load_sequences(folder)
        return Encoded(seqs, __import__("collections").Counter(meta["skipped"]), meta["examples"])

    def through_cache():
        pr = cached(key, prepare, save=save_prepared, load=load_prepared, root=root)
        return cached(enc_key, lambda: encode(pr), save=save_enc, load=load_enc, root=root)
    cold, t_cold = timed(through_cache)
    warm, t_warm = timed(through_cache)
    same = [s.input_ids for s in warm.sequences] == [s.input_ids for s in enc.sequences] and \
        [s.labels for s in warm.sequences] == [s.labels for s in enc.sequences]
    size_mb = round(sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20, 1)
    shutil.rmtree(root, ignore_errors=True)
    rows += [{"phase": "cached: first run (build + save)", "seconds": t_cold},
             {"phase": "cached: second run (load)", "seconds": t_warm}]

    rep = prep.report
    print(f"\n{src.name}: {rep['rows_in']:,} rows in, {rep['rows_out']:,} kept, splits {rep['splits']}; "
          f"train → {len(enc.sequences):,} blocks of ≤{tc.block_size}, {tokens:,} tokens "
          f"({100 * tokens / (len(enc.sequences) * tc.block_size):.1f}% fill); cache {size_mb} MB; "
          f"cache round-trip identical: {same}; load {loadavg()}\n")
    print(table(rows, ["phase", "seconds"]))
    write_result("data", envelope("data", settings=vars(args), table=rows, report=rep, train_blocks=len(enc.sequences),
                                  train_tokens=tokens, cache_mb=size_mb, cache_identical=same,
                                  peak_rss_gb=peak_rss_gb(), load_before=load0, load_end=loadavg()), args.out)


if __name__ == "__main__":
    main()
