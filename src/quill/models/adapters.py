"""What a stage trains: LoRA or DoRA adapters (peft; rank-stabilised scaling and gaussian / PiSSA initialisation
as options) or every weight ("full").

Target names are resolved here, per architecture, from the model's own modules rather than from a table:
GPT-2 uses fused ``Conv1D`` layers (``c_attn``, ``c_proj``, ``c_fc``; their weights are stored transposed,
so LoRA needs ``fan_in_fan_out=True``, set here instead of relying on peft's warning-and-fix), Llama-style
models use ``q/k/v/o_proj`` and ``gate/up/down_proj``. The output layer (``lm_head``, often tied to the
input embeddings) is never a target.

Every entry point checks that something is trainable: the classic silent failure is stage 2 "training" a
frozen adapter reloaded with peft's default ``is_trainable=False``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from quill.config import AdapterConfig
from quill.errors import ModelError
from quill.files import atomic_dir
from quill.models.quantize import dequantize_merge, is_quantized, quantize_linears


PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa"}  # adapter.init -> peft's init_lora_weights


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _linear_modules(model) -> dict[str, torch.nn.Module]:
    """Qualified name -> Linear/Conv1D module, without the output layer."""
    from transformers.pytorch_utils import Conv1D
    base = model.get_base_model() if _is_peft(model) else model
    out_layer = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return {name: mod for name, mod in base.named_modules()
            if isinstance(mod, (torch.nn.Linear, Conv1D)) and mod is not out_layer
            and name.split(".")[-1] not in ("lm_head", "embed_out", "output")}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def lora_targets(model, targets: str | list[str] = "all-linear") -> list[str]:
    """Module names for LoRA: ``all-linear`` (every Linear/Conv1D but the output layer), ``attention``
    (linear layers inside attention blocks), or explicit names (each must match a linear layer)."""
    modules = _linear_modules(model)
    leaves = {n: n.split(".")[-1] for n in modules}
    if targets == "all-linear":
        return sorted(set(leaves.values()))
    if targets == "attention":
        def in_attn(n: str) -> bool:
            return any("attn" in p or "attention" in p for p in n.split(".")[:-1])
        inside = {n for n in modules if in_attn(n)}
        if not inside:
            raise ModelError("targets 'attention': no linear layers inside attention blocks; name them instead")
        outside = {leaves[n] for n in modules if n not in inside}
        # a leaf name also used outside attention (GPT-2's c_proj) is qualified by its parent ("attn.c_proj")
        return sorted({leaves[n] if leaves[n] not in outside else ".".join(n.split(".")[-2:]) for n in inside})
    names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    for t in names:
        if t.split(".")[-1] in ("lm_head", "embed_out", "output"):
            raise ModelError(f"adapter target '{t}': the output layer is never a LoRA target")
        if not any(_matches(n, t) for n in modules):
            raise ModelError(f"adapter target '{t}' matches no linear layer; this model has "
                             f"{sorted(set(leaves.values()))}")
    if not names:
        raise ModelError("adapter targets is empty")
    return names


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def _check_trainable(model) -> None:
    trainable, total = count_params(model)
    print(f"trainable params: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")
    if trainable == 0:
        raise ModelError("no trainable parameters: the stage would train nothing")


def apply_adapter(model, adapter_cfg: AdapterConfig):
    """LoRA or DoRA (a peft model; a model that already has an adapter keeps training it; ``rslora`` and
    ``init`` passed to peft) or full fine-tuning (every weight trainable; an existing adapter is merged first)."""
    if adapter_cfg.method == "full":
        if _is_peft(model):
            model = merge_adapter(model)
        for p in model.parameters():
            p.requires_grad_(True)
    elif _is_peft(model):
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    else:
        from peft import LoraConfig, get_peft_model
        from transformers.pytorch_utils import Conv1D
        if adapter_cfg.quantize:  # QLoRA: the frozen base quantised first, peft then wraps bitsandbytes layers
            model = quantize_linears(model, _linear_modules(model), adapter_cfg.quantize)
        names = lora_targets(model, adapter_cfg.targets)
        chosen = [m for n, m in _linear_modules(model).items() if any(_matches(n, t) for t in names)]
        lora = LoraConfig(r=adapter_cfg.r, lora_alpha=adapter_cfg.alpha, lora_dropout=adapter_cfg.dropout,
                          target_modules=names, task_type="CAUSAL_LM", bias="none",
                          fan_in_fan_out=bool(chosen) and all(isinstance(m, Conv1D) for m in chosen),
                          use_dora=adapter_cfg.method == "dora", use_rslora=adapter_cfg.rslora,
                          init_lora_weights=PEFT_INIT[adapter_cfg.init])
        model = get_peft_model(model, lora)
    _check_trainable(model)
    return model


def load_adapter(model, folder: str | Path, trainable: bool = True):
    """Attach a saved adapter. ``trainable=True`` by default (peft's default is frozen, which would make a
    continued stage train nothing); inference passes ``trainable=False``."""
    from peft import PeftModel
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{folder}: no adapter_config.json (not an adapter folder)")
    model = PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    if trainable:
        _check_trainable(model)
    return model


def merge_adapter(model):
    """Fold LoRA weights into the base weights and return the plain transformers model (no-op otherwise);
    a quantised base (QLoRA) is de-quantised into full-precision linear layers first."""
    if is_quantized(model):
        return dequantize_merge(model)
    return model.merge_and_unload() if _is_peft(model) else model


def save_adapter(folder: str | Path, model) -> Path:
    """Atomically write the adapter alone (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    if not _is_peft(model):
        raise ModelError("save_adapter needs a model with a LoRA adapter (method: full saves with save_model)")
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp))
    return Path(folder)
