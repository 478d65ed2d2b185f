"""Memory before launching: the estimated peak memory per device of a stage under each parallel strategy, from the
model's ``config.json`` alone (no weights loaded), so that "a 7B model needs QLoRA on 24 GB or ZeRO-3 across 4
GPUs" is learnt before a run dies of an out-of-memory error (``quill train CONFIG --dry-run``).

Parameters (exact for Llama-style and GPT-2 models; ``tests/test_memory_plan.py`` checks them against ``numel``):
embeddings ``V·h`` (GPT-2: + ``n_positions·h``), the output layer ``V·h`` unless tied, a final norm, and per
block, Llama-style: q ``h·H·d``, k and v ``h·K·d`` each (grouped-query attention, ``K`` kv heads of ``d =
head_dim``), o ``H·d·h``, gate and up ``h·i`` each, down ``i·h``, two RMSNorms of ``h`` (biases when
``attention_bias`` / ``mlp_bias``); GPT-2: c_attn ``h·3h``, c_proj ``h·h``, c_fc ``h·i`` (``i = n_inner or
4h``), mlp.c_proj ``i·h``, all with biases, two LayerNorms of ``2h``. Other architectures are read as
Llama-style (Qwen2's q/k/v biases are not counted). LoRA of rank ``r`` trains ``r·(in + out)`` per targeted
matrix, targets resolved as ``models.adapters`` does ('all-linear': every block matrix; 'attention': those in
the attention block; names: matched on a matrix's last one or two name parts); DoRA adds ``out`` (a magnitude).

Bytes per parameter, quill's policy (``train.pipeline``: frozen weights in the training precision, trained ones
in fp32 under autocast): a frozen weight ``c`` (precision fp32: 4; bf16, fp16, auto: 2, auto meaning bf16 on
the GPUs this plans for); a trained weight 4, its gradient 4, AdamW's two moments 8, and under 16-bit autocast
the low-precision copy it caches, ``c``. Full fine-tuning: 4 + 4 + 8 + 2 = 18 bytes per parameter, no separate
master copy (the fp32 weight is the master). QLoRA (``adapter.quantize``, ``models.quantize``) holds the frozen
block matrices quantized, embeddings, norms and output layer in ``c``: nf4 0.5 bytes + its double-quantized
absmax, a byte per block of 64 and an fp32 per 256 blocks (0.5159; plain fp32 absmax would be 0.5625), int8 1
byte (its fp32 scale per row, ``4/in`` a parameter, left out); the adapter costs as in LoRA. Strategies, per
device over ``N`` devices: ``single`` and ``ddp`` (replicated) hold everything; ``zero2`` divides gradients and
optimizer states by ``N``; ``zero3`` (FSDP FULL_SHARD, the same arithmetic) divides the weights too, frozen ones
included.

Activations kept for the backward pass, per token and block, after Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models" (arXiv:2205.05198, section 4.1), in bytes for 16-bit values
(doubled in fp32): attention ``11h``, two norms ``4h``, MLP ``3h + 4i`` (the paper's ``19h`` at ``i = 4h``,
its ``34h`` per block in all) or, gated (SwiGLU keeps gate, up, silu and product outputs), ``2h + 8i``; plus
the attention scores ``5·H·s`` with eager attention only (SDPA, flash and flex kernels do not store them).
No gradient checkpointing: TrainConfig has no such setting and quill trains without it. Tokens per device:
``micro_batch × block_size``, twice that for DPO (a pair is two rows); an upper bound for SFT, whose examples
are at most ``block_size`` long. The fused loss (``train.loss``) never holds the full logits: one chunk of
``min(GPU_CHUNK, rows) × V`` fp32 logits (rows: the micro-batch's tokens, one row for DPO) and the fp32
gradient of the hidden states, ``tokens × h × 4``, counted with the activations. Not counted: the CUDA context
and fragmentation (so "fits" means a total within ``HEADROOM`` of a device), DDP's gradient buckets, ZeRO-3's
gathered block in flight, LoRA's rank-``r`` intermediates. Estimates, good to ~20%.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from transformers import AutoConfig

from quill.config import AdapterConfig, ModelConfig, TrainConfig, load_config
from quill.errors import ModelError
from quill.models.presets import looks_like_hub_id, resolve_model_path
from quill.network import hub_offline
from quill.train.loss import GPU_CHUNK

GIB = 1 << 30
DEVICE_SIZES_GIB = (16, 24, 40, 80)
HEADROOM = 0.9                     # of a device's memory usable by tensors (CUDA context, fragmentation)
SHARDED = {"single": (), "ddp": (), "zero2": ("grads", "optimizer"), "zero3": ("weights", "grads", "optimizer")}
LABELS = {**{s: s for s in SHARDED}, "zero3": "zero3/fsdp"}
QUANT_BYTES = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0}
TRAINED_BYTES, GRAD_BYTES, ADAMW_BYTES = 4, 4, 8
ROW = "{:<11} {:<11} {:>7} {:>8} {:>7} {:>9} {:>11} {:>9}"


@dataclass(frozen=True)
class Matrix:
    """One linear layer of a block: its name qualified by its parent (``self_attn.q_proj``) and its shape."""
    name: str
    fan_in: int
    fan_out: int
    bias: bool


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on, read from a transformers config (Llama-style or GPT-2 names)."""
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    positions: int          # learned position embeddings (GPT-2), 0 for rotary models
    tied: bool
    gpt2: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    def matrices(self) -> list[Matrix]:
        """The linear layers of one block (what LoRA targets and QLoRA quantizes)."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        if self.gpt2:
            return [Matrix("attn.c_attn", h, 3 * h, True), Matrix("attn.c_proj", h, h, True),
                    Matrix("mlp.c_fc", h, i, True), Matrix("mlp.c_proj", i, h, True)]
        ab, mb = self.attention_bias, self.mlp_bias
        return [Matrix("self_attn.q_proj", h, q, ab), Matrix("self_attn.k_proj", h, kv, ab),
                Matrix("self_attn.v_proj", h, kv, ab), Matrix("self_attn.o_proj", q, h, ab),
                Matrix("mlp.gate_proj", h, i, mb), Matrix("mlp.up_proj", h, i, mb), Matrix("mlp.down_proj", i, h, mb)]


@dataclass(frozen=True)
class ParamCount:
    embeddings: int
    blocks: int             # every block: matrices, biases, norms
    block_weights: int      # the blocks' matrix weights alone (what QLoRA quantizes)
    final_norm: int
    lm_head: int            # 0 when tied to the embeddings

    @property
    def total(self) -> int:
        return self.embeddings + self.blocks + self.final_norm + self.lm_head


@dataclass(frozen=True)
class Estimate:
    """Peak bytes per device of one (method, strategy, devices); activations include the loss's logits chunk."""
    method: str
    strategy: str
    devices: int
    weights: float
    grads: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations

    def fits(self, gib: float) -> bool:
        return self.total <= gib * GIB * HEADROOM


@dataclass(frozen=True)
class MemoryPlan:
    title: str
    params: ParamCount
    trainable: int
    tokens: int             # per micro-batch per device
    estimates: tuple[Estimate, ...]


def model_shape(config: Any) -> ModelShape:
    """A ``PretrainedConfig`` or its dict (``config.json``) -> ModelShape; a multimodal config's ``text_config``
    is the language model's. A missing ``tie_word_embeddings`` means tied for GPT-2, untied otherwise (the
    transformers defaults of those classes)."""
    raw: Mapping[str, Any] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    raw = raw.get("text_config") or raw
    gpt2 = "n_embd" in raw or raw.get("model_type") == "gpt2"

    def get(*keys: str, default: Any = None) -> Any:
        found = next((raw[k] for k in keys if raw.get(k) is not None), default)
        if found is None:
            raise ModelError(f"model config has no {' / '.join(keys)}: cannot plan its memory")
        return found
    hidden, heads = int(get("hidden_size", "n_embd")), int(get("num_attention_heads", "n_head"))
    return ModelShape(
        hidden=hidden, intermediate=int(get("intermediate_size", "n_inner", default=4 * hidden)),
        layers=int(get("num_hidden_layers", "n_layer")), heads=heads,
        kv_heads=int(get("num_key_value_heads", default=heads)), head_dim=int(get("head_dim", default=hidden // heads)),
        vocab=int(get("vocab_size")), positions=int(get("n_positions", default=0)) if gpt2 else 0,
        tied=bool(raw.get("tie_word_embeddings", gpt2)), gpt2=gpt2,
        attention_bias=bool(raw.get("attention_bias", False)), mlp_bias=bool(raw.get("mlp_bias", False)))


def param_counts(shape: ModelShape) -> ParamCount:
    matrices, norm = shape.matrices(), shape.hidden * (2 if shape.gpt2 else 1)   # LayerNorm: weight and bias
    per_block = sum(m.fan_in * m.fan_out + (m.fan_out if m.bias else 0) for m in matrices) + 2 * norm
    return ParamCount(embeddings=(shape.vocab + shape.positions) * shape.hidden, blocks=shape.layers * per_block,
                      block_weights=shape.layers * sum(m.fan_in * m.fan_out for m in matrices),
                      final_norm=norm, lm_head=0 if shape.tied else shape.vocab * shape.hidden)


def targeted(shape: ModelShape, targets: str | list[str]) -> list[Matrix]:
    """The block matrices an adapter's ``targets`` names (see ``models.adapters.lora_targets``)."""
    matrices = shape.matrices()
    if targets == "all-linear":
        return matrices
    if targets == "attention":
        return [m for m in matrices if "attn" in m.name.split(".")[0]]   # attn (GPT-2), self_attn
    names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    for t in names:
        if not any(m.name == t or m.name.endswith("." + t) for m in matrices):
            raise ModelError(f"adapter target '{t}' matches no linear layer; this model has "
                             f"{sorted({m.name.split('.')[-1] for m in matrices})}")
    return [m for m in matrices if any(m.name == t or m.name.endswith("." + t) for t in names)]


def trainable_params(shape: ModelShape, adapter: AdapterConfig) -> int:
    """Every parameter (full), or the adapter's: ``r·(in + out)`` per targeted matrix (+ ``out`` for DoRA)."""
    if adapter.method == "full":
        return param_counts(shape).total
    per_block = sum(adapter.r * (m.fan_in + m.fan_out) + (m.fan_out if adapter.method == "dora" else 0)
                    for m in targeted(shape, adapter.targets))
    return shape.layers * per_block


def activation_bytes(shape: ModelShape, tokens: int, seq: int, value_bytes: int, eager: bool = False) -> float:
    """Bytes the blocks keep for the backward pass (the module docstring's formula)."""
    h, i = shape.hidden, shape.intermediate
    mlp = 3 * h + 4 * i if shape.gpt2 else 2 * h + 8 * i
    per_block = 15 * h + mlp + (5 * shape.heads * seq if eager else 0)   # per token, 16-bit values
    return tokens * value_bytes / 2 * per_block * shape.layers


def tokens_per_device(train: TrainConfig, kind: str) -> int:
    """Tokens of one micro-batch: ``micro_batch`` rows of ``block_size``; a DPO pair is two rows."""
    return (2 if kind == "dpo" else 1) * train.micro_batch * train.block_size


def estimate(shape: ModelShape, adapter: AdapterConfig, train: TrainConfig, strategy: str, devices: int = 1,
             kind: str = "dapt", eager: bool = False) -> Estimate:
    """Peak bytes per device of training with ``adapter`` (QLoRA if it quantizes) under ``strategy``."""
    if strategy not in SHARDED:
        raise ValueError(f"strategy {strategy!r}: one of {tuple(SHARDED)}")
    quant, devices = adapter.quantize if adapter.trains_adapter else None, 1 if strategy == "single" else devices
    c = 4 if train.precision == "fp32" else 2     # a frozen weight, an activation; auto: bf16 on a GPU
    params, trainable = param_counts(shape), trainable_params(shape, adapter)
    frozen = params.total * c if adapter.trains_adapter else 0.0
    if quant is not None:
        frozen -= params.block_weights * (c - QUANT_BYTES[quant])
    parts = {"weights": frozen + trainable * (TRAINED_BYTES + (c if c < 4 else 0)),
             "grads": trainable * GRAD_BYTES, "optimizer": trainable * ADAMW_BYTES}
    parts.update({k: parts[k] / devices for k in SHARDED[strategy]})
    tokens = tokens_per_device(train, kind)
    rows = train.block_size if kind == "dpo" else tokens   # the fused loss's logits: one chunk (of one row: DPO)
    loss = min(GPU_CHUNK, rows) * shape.vocab * 4 + tokens * shape.hidden * 4   # + fp32 grad of the hidden states
    acts = activation_bytes(shape, tokens, train.block_size, c, eager) + loss
    method = f"q{adapter.method}-{quant}" if quant else adapter.method
    return Estimate(method, strategy, devices, activations=acts, **parts)


def plan(shape: ModelShape, adapter: AdapterConfig, train: TrainConfig, kind: str = "dapt", title: str = "",
         devices: tuple[int, ...] = (1, 2, 4, 8), quants: tuple[str, ...] = ("nf4",), eager: bool = False
         ) -> MemoryPlan:
    """Every (method, strategy, devices): the stage's own adapter, then as alternatives QLoRA with each of
    ``quants`` (a full fine-tuning stage: LoRA of its ``r`` and ``targets``), or, for a stage already quantized,
    its adapter on the unquantized base."""
    method = adapter.method if adapter.trains_adapter else "lora"
    others = [adapter.model_copy(update={"method": method, "quantize": q}) for q in quants] \
        if adapter.quantize is None else [adapter.model_copy(update={"quantize": None})]
    variants = [adapter, *others]
    cells = [(s, n) for n in devices for s in SHARDED if (s == "single") == (n == 1)]
    estimates = tuple(estimate(shape, a, train, s, n, kind, eager) for a in variants for s, n in cells)
    return MemoryPlan(title, param_counts(shape), trainable_params(shape, adapter), tokens_per_device(train, kind),
                      estimates)


def fitting(p: MemoryPlan, method: str, size: int) -> str:
    """'any strategy' when one device fits (sharding only lowers it), else the fewest devices per strategy."""
    fewest: dict[str, int] = {}
    for e in p.estimates:
        if e.method == method and e.fits(size):
            fewest[e.strategy] = min(e.devices, fewest.get(e.strategy, e.devices))
    if "single" in fewest:
        return "any strategy"
    return ", ".join(f"{LABELS[s]} x{n}" for s, n in fewest.items()) or \
        f"nothing up to {max(e.devices for e in p.estimates)} devices"


def format_plan(p: MemoryPlan) -> str:
    """The plan as a table (GiB per device) and a verdict per common device size."""
    pc, methods = p.params, dict.fromkeys(e.method for e in p.estimates)
    head = f"lm_head {pc.lm_head / 1e6:.1f}M" if pc.lm_head else "lm_head tied"
    lines = [p.title] if p.title else []
    lines += [f"params {pc.total / 1e6:.1f}M (embeddings {pc.embeddings / 1e6:.1f}M, blocks {pc.blocks / 1e6:.1f}M, "
              f"{head}), trainable {p.trainable / 1e6:.2f}M; {p.tokens:,} tokens per device per micro-batch",
              ROW.format("method", "strategy", "devices", "weights", "grads", "optimizer", "activations", "total")]
    for e in p.estimates:
        sizes = (e.weights, e.grads, e.optimizer, e.activations, e.total)
        lines.append(ROW.format(e.method, LABELS[e.strategy], e.devices, *(f"{x / GIB:.2f}" for x in sizes)))
    for gib in DEVICE_SIZES_GIB:
        lines.append(f"fits {gib} GiB: " + "; ".join(f"{m}: {fitting(p, m, gib)}" for m in methods))
    return "\n".join(lines)


def read_model_config(model: ModelConfig) -> dict:
    """The model's ``config.json`` without its weights (a local preset is built into the cache on first use)."""
    path = resolve_model_path(model.name)
    hub = looks_like_hub_id(path)
    where = {"revision": model.revision, "local_files_only": hub_offline()} if hub else {"local_files_only": True}
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=model.trust_remote_code, **where).to_dict()
    except (OSError, ValueError) as err:
        first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ModelError(f"{model.name}: cannot read its config ({first})") from None


def dry_run(config_path: str, overrides: list[str] | None = None) -> int:
    """``quill train CONFIG --dry-run``: each stage's memory plan; no data is prepared, no weights loaded."""
    cfg = load_config(config_path, overrides)
    shape, model = model_shape(read_model_config(cfg.model)), cfg.model
    for i, stage in enumerate(cfg.stages):
        a, t = stage.adapter, stage.train
        how = "full fine-tuning" if a.method == "full" else f"{a.method} r={a.r} on {a.targets}"
        title = (f"stage {stage.name} ({stage.kind}): {model.name}, {how}, precision {t.precision}, "
                 f"micro_batch {t.micro_batch} x block_size {t.block_size}")
        print(("\n" if i else "") + format_plan(plan(shape, a, t, stage.kind, title,
                                                     eager=model.attn_implementation == "eager")))
    print(f"\nGiB per device (estimates: src/quill/train/memory.py); 'fits' leaves {1 - HEADROOM:.0%} of a device free")
    return 0
