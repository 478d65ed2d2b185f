#!/usr/bin/env bash
# Peak RSS of the largest process (GNU time), DDP against FSDP, two CPU processes over gloo: SmolLM2-135M,
# full fine-tuning and LoRA, 2 steps of 2 x 256-token blocks per process (bench/fsdp_memory.yaml).
#   bash bench/fsdp_memory.sh        (from the repository root, in the venv; ~4 minutes on 2 cores)
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
out=runs/bench/fsdp-memory; mkdir -p "$out"
for method in full lora; do
  for strategy in ddp fsdp; do
    /usr/bin/time -v python -m torch.distributed.run --nproc_per_node 2 --master_port 29590 -m quill.cli train \
      bench/fsdp_memory.yaml --run-dir "$out/$strategy-$method" --overwrite --set distributed.strategy=$strategy \
      --set stages.dapt.adapter.method=$method > "$out/$strategy-$method.log" 2>&1
    echo "$method $strategy: $(grep -o 'Maximum resident set size (kbytes): [0-9]*' "$out/$strategy-$method.log") \
$(grep -o 'train [0-9.]*;' "$out/$strategy-$method.log")"
  done
done
