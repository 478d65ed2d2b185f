"""What a stage trains and how: the adapter (LoRA, DoRA or every weight) and the loop's settings."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from quill.config.base import _Strict


class AdapterConfig(_Strict):
    method: Literal["lora", "dora", "full"] = Field(
        "lora", description="lora: train a LoRA adapter (peft), the base weights frozen; dora: LoRA with a "
        "learned magnitude per output (peft's use_dora); full: train every weight")
    r: int = Field(16, gt=0, description="LoRA rank")
    alpha: float = Field(32, gt=0, description="LoRA alpha: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout (0: peft's default and the fastest; "
                           "compiled CPU training hashes the masks and recomputes them in the backward pass)")
    targets: str | list[str] = Field("all-linear", description="'all-linear', 'attention', or module names")
    merge: bool = Field(True, description="merge the adapter into the weights at the end of the stage "
                        "(the reference's method); false continues the same adapter in the next stage")
    rslora: bool = Field(False, description="rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead "
                         "of alpha / r (peft's use_rslora)")
    init: Literal["default", "gaussian", "pissa"] = Field(
        "default", description="adapter initialisation (peft's init_lora_weights): default (B = 0), gaussian, or "
        "pissa (A, B from the weights' principal singular vectors, the residual left in the base; needs merge: "
        "true, since the adapter alone does not fit the original base)")
    quantize: Literal["nf4", "int8"] | None = Field(
        None, description="QLoRA: hold the frozen base's linear layers quantised (bitsandbytes: nf4 4-bit with "
        "double-quantised scales, or int8 per row) while the adapter trains in full precision; the output layer "
        "and embeddings stay unquantised. Needs merge: true (the saved model is the de-quantised base plus the "
        "adapter, plain safetensors) and bitsandbytes (pip install 'quill[qlora]')")

    @model_validator(mode="after")
    def _adapter_settings_need_an_adapter(self) -> "AdapterConfig":
        if self.method == "full" and (self.rslora or self.init != "default"):
            raise ValueError("rslora and init are adapter settings: not with method: full")
        if self.init == "pissa" and not self.merge:
            raise ValueError("init: pissa needs merge: true (its adapter is relative to a changed base)")
        if self.quantize is not None:
            if self.method == "full":
                raise ValueError("quantize is for adapters (QLoRA: a frozen quantised base): not with method: full")
            if self.init == "pissa":
                raise ValueError("quantize: not with init: pissa (PiSSA initialises from the full-precision "
                                 "weights and leaves a residual base that would then be quantised)")
            if not self.merge:
                raise ValueError("quantize needs merge: true (a continued adapter would need the same "
                                 "quantised base in the next stage and on resume)")
        return self

    @property
    def trains_adapter(self) -> bool:
        """Whether the stage trains a peft adapter (lora, dora) rather than every weight."""
        return self.method != "full"


class TrainConfig(_Strict):
    micro_batch: int = Field(2, gt=0, description="examples (sft, dpo pairs) or packed blocks (dapt) per "
                             "forward pass and process")
    grad_accum: int = Field(4, gt=0, description="micro-batches per optimizer step; the loss is normalised by "
                            "the target tokens of the whole step")
    epochs: float = Field(1.0, gt=0, description="passes over the train split (fractions allowed)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW)")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="learning-rate decay after "
                                                              "the warmup")
    warmup: float = Field(0.03, ge=0, description="< 1: fraction of steps; >= 1: number of steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not on biases and norms)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient norm to this (None: no "
                                        "clipping)")
    block_size: int = Field(512, gt=8, description="tokens per packed block (dapt) / max example length (sft)")
    packing: bool = Field(True, description="pack examples into blocks without cross-attention (else pad, "
                          "grouped by length)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="training precision: auto is bf16 where the hardware runs it faster (recent GPUs, "
        "AMX CPUs), else fp32; frozen weights in it, trained weights in fp32")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the transformer blocks for "
                                                  "training steps (auto: on GPUs; on CPUs with a C++ compiler "
                                                  "for stages of 64+ micro-batches)")
    seed: int = Field(0, description="seed of the new adapter's initial weights, dropout and the batch order")
    eval_every: int | None = Field(None, gt=0, description="val loss every N optimizer steps")
    eval_batches: int | None = Field(None, gt=0, description="cap on val batches per evaluation")
    save_every: int | None = Field(None, gt=0, description="checkpoint every N optimizer steps")
    early_stopping_patience: int | None = Field(None, gt=0, description="evaluations without val improvement")
    log_every: int = Field(1, gt=0, description="write a metrics.jsonl row (loss, lr, tokens/s, grad norm) "
                           "every N optimizer steps")

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        """YAML 1.1 reads ``compile: on`` / ``off`` as booleans: take them as meant."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class DistributedConfig(_Strict):
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="how several processes share the work: ddp copies the model to each (accelerate's "
        "default); fsdp shards the weights, gradients and optimizer states across them (FSDP2's fully_shard "
        "through accelerate, one unit per transformer block: ZeRO-3's memory); auto: fsdp when the launcher's "
        "accelerate config turns FSDP on (configs/accelerate/fsdp.yaml), else ddp")
    reshard_after_forward: bool = Field(True, description="fsdp: free each block's gathered weights after its "
                                        "forward and gather them again for the backward (ZeRO-3's memory); "
                                        "false keeps them until the backward (ZeRO-2's: fewer all-gathers)")

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"
