"""The whole two-stage pipeline (`quill train`) on one GPU at the DeepSeek-coder-1.3B shape, timed.

The reference's own configuration (``quill/configs/deepseek-coder-1.3b-reference.yaml``: LoRA r 16 /
alpha 32 / dropout 0.05 on all linear layers, DAPT in 2048-token blocks then SFT up to 1024 tokens,
lr 1e-4, one epoch each, LoRA merged after each stage), run by quill's real pipeline (data preparation,
both stages, evaluation, merging and saving) with only what the device machine forces changed:

- the model is a random-initialised ``LlamaConfig`` of the 1.3B shape (hidden 2048, 24 layers, 16 heads,
  intermediate 5504, vocabulary 32,256): no weights can be downloaded there. Its tokenizer is a byte-level
  BPE with the same vocabulary size, trained here on the poems (``--export``);
- the data are local files: the first 13,854 public-domain poems of ``pd_poems.jsonl.gz`` (the reference's
  row count, 80/20 split) and the 2,330 instruction pairs (80/5/15);
- the micro-batch is sized to the GPU (``--dapt-batch``/``--sft-batch``, default 8 × 2048 and 16 × 1024
  tokens, accumulation 1), since the reference's 2 × 4 leaves an H100 idle;
- samples are off (``eval.prompts: []``): generation from a random model says nothing, and its compile
  would cost device minutes. Evaluation is capped at ``--eval-batches`` batches per split.

It reports each stage's training tokens, seconds and tokens/s as the pipeline measures them (the
training loop's wall time, evaluations inside it included), and the whole command's wall time.

Here: ``python bench/gpu_pipeline.py --export bench/gpu_data`` (tokenizer and data into the carried folder),
then ``python bench/gpu_pipeline.py --smoke`` (a tiny shape on the CPU, to check the script runs).
On the device: ``PYTHONPATH=src python3 bench/gpu_pipeline.py --data bench/gpu_data``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from _common import REPO, envelope, read_texts, resolve_data, table, write_result  # noqa: E402

VOCAB = 32256
POEMS = 13854  # the reference's Poetry-Foundation-Poems row count
EOS = "<|endoftext|>"


def export(folder: Path) -> None:
    """The tokenizer (BPE trained on the poems) and the two data files, into ``folder`` (git-ignored)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    poems = resolve_data(None)
    shutil.copyfile(poems, folder / "pd_poems.jsonl.gz")
    shutil.copyfile(poems.parent / "poem_instructions.jsonl", folder / "poem_instructions.jsonl")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(read_texts(poems), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    fast.save_pretrained(folder / "tokenizer")
    texts = read_texts(poems, POEMS)
    n = sum(len(ids) + 1 for ids in fast(texts, add_special_tokens=False)["input_ids"])
    print(f"wrote {folder}: tokenizer ({len(fast)} ids), data; the first {len(texts):,} poems are {n:,} tokens")


def build_model(folder: Path, tokenizer: Path, smoke: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    tok = AutoTokenizer.from_pretrained(tokenizer)
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=128) if smoke else \
        dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
             intermediate_size=5504)
    cfg = LlamaConfig(**shape, vocab_size=VOCAB, max_position_embeddings=4096, rope_theta=100000.0,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters -> {folder}")


def pipeline_config(data: Path, model: Path, args) -> dict:
    cfg = yaml.safe_load((REPO / "src/quill/configs/deepseek-coder-1.3b-reference.yaml").read_text())
    cfg.update(name="gpu-pipeline", output_dir=str(args.work / "runs"), model={"name": str(model)},
               eval={"prompts": [], "suite": None, "max_batches": args.eval_batches},
               tracking={"report_to": []})
    dapt, sft = cfg["stages"]
    dapt["data"].update(source=str(data / "pd_poems.jsonl.gz"), columns={}, max_rows=args.poems)
    sft["data"].update(source=str(data / "poem_instructions.jsonl"))
    for stage, batch in ((dapt, args.dapt_batch), (sft, args.sft_batch)):
        stage["train"].update(micro_batch=batch, grad_accum=1, eval_batches=args.eval_batches)
        if args.smoke:
            stage["train"].update(block_size=128, max_steps=2, eval_every=1)
    if args.smoke:
        dapt["data"]["max_rows"] = min(args.poems, 300)
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", metavar="DIR", type=Path, help="write the tokenizer and data into DIR here, then exit")
    p.add_argument("--data", type=Path, default=REPO / "bench/gpu_data", help="folder made by --export")
    p.add_argument("--work", type=Path, default=Path("/tmp/quill-gpu-pipeline"), help="model and run folder")
    p.add_argument("--poems", type=int, default=POEMS, help="DAPT rows read (max_rows)")
    p.add_argument("--dapt-batch", type=int, default=8, help="DAPT micro-batch (2048-token blocks)")
    p.add_argument("--sft-batch", type=int, default=16, help="SFT micro-batch (examples up to 1024 tokens)")
    p.add_argument("--eval-batches", type=int, default=16, help="cap on batches per evaluation")
    p.add_argument("--smoke", action="store_true", help="tiny shape, 2 steps a stage: checks the script (CPU ok)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.export:
        return export(args.export)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    from quill.train.pipeline import train_from_config
    t0 = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)
    model = args.work / "model"
    build_model(model, args.data / "tokenizer", args.smoke)
    built = time.perf_counter() - t0
    config = args.work / "pipeline.yaml"
    while True:
        config.write_text(yaml.safe_dump(pipeline_config(args.data, model, args)))
        try:
            run = train_from_config(config, run_dir=args.work / "runs/gpu-pipeline", overwrite=True)
            break
        except torch.OutOfMemoryError:  # one device call: halve the batch rather than lose the run
            if args.dapt_batch == 1 and args.sft_batch == 1:
                raise
            args.dapt_batch, args.sft_batch = max(1, args.dapt_batch // 2), max(1, args.sft_batch // 2)
            print(f"out of GPU memory: again with micro-batches {args.dapt_batch} (dapt), {args.sft_batch} (sft)")
            torch.cuda.empty_cache()
    total = time.perf_counter() - t0
    summary = json.loads((run / "summary.json").read_text())
    rows, train_s, tokens = [], 0.0, 0
    for name in summary["stage_order"]:
        r = summary["stages"][name]
        train_s, tokens = train_s + r["wall_s"], tokens + r["tokens"]
        val = [r.get("val_loss_before"), r.get("val_loss_after")]
        rows.append({"stage": name, "steps": r["steps"], "tokens": r["tokens"], "train s": r["wall_s"],
                     "tok/s": r["tokens_per_s"], "val loss": " → ".join(f"{v:.4f}" for v in val if v is not None)})
    rows.append({"stage": "both", "steps": sum(r["steps"] for r in rows), "tokens": tokens,
                 "train s": round(train_s, 1), "tok/s": round(tokens / max(train_s, 1e-9), 1), "val loss": ""})
    print(table(rows, ["stage", "steps", "tokens", "train s", "tok/s", "val loss"]))
    print(f"whole command: {total:.0f} s (model built and saved in {built:.0f} s)")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = envelope("gpu_pipeline", settings=settings, table=rows, whole_s=round(total, 1), build_s=round(built, 1),
                      peak_gpu_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available()
                      else None)
    write_result("gpu_pipeline", result, args.out or (str(args.work / "result.json") if args.smoke else None))


if __name__ == "__main__":
    main()
