"""QLoRA (``adapter.quantize: nf4 | int8``): the frozen base held quantised by bitsandbytes, the LoRA / DoRA
adapter trained on top in full precision, and the stage's saved model merged into a de-quantised base.

**Route: quantise the loaded model in place**, not ``from_pretrained(quantization_config=BitsAndBytesConfig)``.
Each ``nn.Linear`` that ``adapters._linear_modules`` lists (every linear layer but the output layer; the
embeddings and the tied ``lm_head`` stay as they are, which the fused chunked loss reads) is replaced by
``bitsandbytes.nn.Linear4bit`` (nf4, blocksize 64, double-quantised scales, compute dtype = the weight's
training dtype) or ``Linear8bitLt`` (int8 per output row, ``has_fp16_weights=False``, no outlier threshold),
quantised with bitsandbytes' functional API so it works on any device, the CPU included.

Why in place (``from_pretrained(quantization_config=...)`` does load nf4 on the CPU with transformers 5.24 and
bitsandbytes 0.50; tried): a stage quantises the model it is handed (the base, or the previous stage's merged
weights, which exist only in memory); the stage has already cast the model to its precision, and a
transformers-quantised model refuses ``.to(dtype)``; and it carries an ``hf_quantizer`` that its
``save_pretrained`` would serialise as a bitsandbytes checkpoint. Setting ``is_loaded_in_4bit`` /
``is_loaded_in_8bit`` on the model is what makes peft wrap these layers with its bitsandbytes LoRA / DoRA
classes. ``peft``'s ``prepare_model_for_kbit_training`` is not used: it casts every other weight to fp32 (the
stage's precision policy decides that) and turns on gradient checkpointing (a separate choice). One
workaround: peft's DoRA on an int8 layer re-creates the weight on CPUs without its scales, which the layer
would then lose (``_keep_int8_scales``).

**Merging** (``dequantize_merge``): each quantised layer is de-quantised (``dequantize_4bit`` /
``int8_vectorwise_dequant``), the adapter's delta added (DoRA: its magnitude rescaling, peft's own
``merge_safe``), and the layer replaced by a plain ``nn.Linear``; the result is an ordinary transformers model
whose ``save_pretrained`` writes full-precision safetensors that load without bitsandbytes. The merged weights
are the de-quantised base the adapter was trained against, so the quantisation error is kept, not undone (the
original full-precision weights are gone). Continuing an adapter on a quantised base (``merge: false``) is a
config error: the next stage and a resumed run would need the same quantised base rebuilt.

bitsandbytes is an optional dependency (``pip install 'quill[qlora]'``): it is imported by ``bitsandbytes()``
when a stage asks for quantisation, and ``train`` checks for it before anything runs.
"""
from __future__ import annotations

import importlib
import logging
import sys
from typing import Iterable

import torch
from torch import nn

from quill.config.base import ConfigError
from quill.errors import ModelError

INSTALL = "pip install 'quill[qlora]'"
NF4_BLOCKSIZE = 64
# bitsandbytes (which peft imports whenever it is installed, quantising or not) looks on the Hugging Face hub
# for an optional 4-bit CPU kernel on AVX512-BF16 CPUs and warns when it cannot reach it, then uses its own:
# offline (quill's default) that warning lands in every run's output and says nothing about the run.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def bitsandbytes(quantize: str | None = "nf4", where: str = "adapter.quantize"):
    """The bitsandbytes module, or a one-line ConfigError naming ``where`` and the install command."""
    try:
        # optional dependency, imported only when a stage quantises (see the module docstring)
        return importlib.import_module("bitsandbytes")
    except ImportError:
        raise ConfigError(f"{where}: {quantize} needs bitsandbytes, which is not installed: {INSTALL}") from None
    except (OSError, RuntimeError) as err:  # a broken native library
        first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ConfigError(f"{where}: {quantize} needs bitsandbytes, which failed to load ({first})") from None


def require_quantization(stages: Iterable) -> None:
    """Before a run starts: every stage with ``adapter.quantize`` set can import bitsandbytes."""
    for stage in stages:
        if stage.adapter.quantize is not None:
            bitsandbytes(stage.adapter.quantize, f"stages.{stage.name}.adapter.quantize")


def _bnb_layer_types() -> tuple[type, ...]:
    bnb = _loaded_bnb()
    return (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt) if bnb is not None else ()


def _loaded_bnb():
    """bitsandbytes if something already imported it (no model can hold its layers otherwise), else None."""
    return sys.modules.get("bitsandbytes")


def is_quantized(model: nn.Module) -> bool:
    """Whether any layer of ``model`` (a peft model or a plain one) is a bitsandbytes quantised linear."""
    types = _bnb_layer_types()
    return bool(types) and any(isinstance(m, types) for m in model.modules())


def _set_parent(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, leaf, new)


def _quantized_linear(bnb, lin: nn.Linear, kind: str) -> nn.Module:
    """A bitsandbytes layer holding ``lin``'s weight quantised (``lin`` itself is left unchanged)."""
    w, dtype = lin.weight.detach(), lin.weight.dtype
    bias = lin.bias is not None
    if kind == "nf4":
        new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=bias, compute_dtype=dtype,
                                compress_statistics=True, quant_type="nf4", device="meta")
        packed, state = bnb.functional.quantize_4bit(w.contiguous(), blocksize=NF4_BLOCKSIZE,
                                                     compress_statistics=True, quant_type="nf4")
        new.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=state, blocksize=NF4_BLOCKSIZE,
                                       compress_statistics=True, quant_type="nf4", bnb_quantized=True, module=new)
        new.quant_state = state
        # On CPUs with AVX512-BF16, bitsandbytes' Linear4bit repacks its weight at the first eval-mode no-grad
        # forward and from then on computes in bf16 with its own kernel. Measured on a 2-core AVX512-BF16 EPYC
        # (tests/test_qlora.py): the trained model's logits then differ from its merged fp32 model by 1.6e-3
        # (LoRA) and 0.10 (DoRA, whose norm de-quantises the weight) instead of < 1e-4. quill keeps one layout
        # and one arithmetic on every CPU: the layer it trains is the layer it evaluates and merges.
        new.support_avx512bf16_for_cpu = False
    elif kind == "int8":
        new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=bias, has_fp16_weights=False,
                                  threshold=0.0, device="meta")
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.to(torch.float16).contiguous())
        new.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
        new.register_forward_pre_hook(_keep_int8_scales)
    else:
        raise ModelError(f"adapter.quantize: unknown kind {kind!r} (nf4 or int8)")
    if bias:
        new.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
    new.quill_dtype = dtype  # the precision the weight had: what merging de-quantises back to
    return new


class _Int8CastNote(logging.Filter):
    """Drops bitsandbytes' per-call "MatMul8bitLt: inputs will be cast from torch.float32 to float16" warning:
    int8 quantises activations through fp16 by design, and it would print once per layer per forward."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast from" not in record.getMessage()


_INT8_NOTE = _Int8CastNote()


def _keep_int8_scales(layer, _args) -> None:
    """Before a Linear8bitLt forward: a weight holding its int8 data (``CB``) but not its scales (``SCB``) would
    make the layer's state lose the scales it took over on its first forward (``init_8bit_state``). peft's
    DoRA re-creates the weight that way on CPUs (``dequantize_module_weight`` moves it with ``.to``)."""
    w = layer.weight
    if getattr(w, "CB", None) is not None and getattr(w, "SCB", None) is None and layer.state.SCB is not None:
        w.CB = None


def quantize_linears(model: nn.Module, modules: dict[str, nn.Module], kind: str) -> nn.Module:
    """Replace the linear layers ``modules`` (qualified name -> module of ``model``) by bitsandbytes layers,
    in place; returns ``model``, flagged for peft (``is_loaded_in_4bit`` / ``is_loaded_in_8bit``)."""
    bnb = bitsandbytes(kind)
    if not modules:
        raise ModelError("adapter.quantize: the model has no linear layers to quantise")
    for name, mod in modules.items():
        if isinstance(mod, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            continue
        if type(mod) is not nn.Linear:  # GPT-2's Conv1D stores its weight transposed
            raise ModelError(f"adapter.quantize: {name} is a {type(mod).__name__}, not an nn.Linear; QLoRA here "
                             "supports Llama-style models (nn.Linear projections), not GPT-2's Conv1D layers")
        _set_parent(model, name, _quantized_linear(bnb, mod, kind))
    model.is_loaded_in_4bit, model.is_loaded_in_8bit = kind == "nf4", kind == "int8"
    if kind == "int8":
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_INT8_NOTE)  # adding it twice: a no-op
    return model


def _unpacked_4bit(layer) -> tuple[torch.Tensor, object]:
    """(data, quant state) of a Linear4bit in bitsandbytes' standard layout: on CPUs with AVX512-BF16 an
    inference forward repacks the weight for its own kernel, which ``dequantize_4bit`` does not read."""
    w, state = layer.weight, layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        bnb = _loaded_bnb()
        w.data, w.quant_state = bnb.functional._convert_weight_packed_for_cpu_inverse(w.data, state)
        layer.quant_state = w.quant_state
    return w.data, w.quant_state


def dequantized_weight(layer) -> torch.Tensor:
    """The full-precision weight a bitsandbytes layer computes with (out_features × in_features)."""
    bnb = _loaded_bnb()
    if isinstance(layer, bnb.nn.Linear4bit):
        data, state = _unpacked_4bit(layer)
        return bnb.functional.dequantize_4bit(data, state)
    scb = layer.weight.SCB if getattr(layer.weight, "SCB", None) is not None else layer.state.SCB
    return bnb.functional.int8_vectorwise_dequant(layer.weight.data, scb)


def _compute_dtype(layer) -> torch.dtype:
    return getattr(layer, "quill_dtype", None) or getattr(layer, "compute_dtype", None) or torch.float32


def _plain_linear(layer, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
    out.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias.detach().to(weight.dtype).clone(), requires_grad=False)
    return out


def _merged(lora_layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a peft LoRA / DoRA layer around a bitsandbytes base, its adapters folded in."""
    base = lora_layer.get_base_layer()
    dtype = _compute_dtype(base)
    weight = dequantized_weight(base).to(dtype)
    bias = base.bias.detach().clone() if base.bias is not None else None
    with torch.no_grad():
        for name in lora_layer.active_adapters:
            if name not in lora_layer.lora_A or name in getattr(lora_layer, "merged_adapters", []):
                continue
            if name in getattr(lora_layer, "lora_variant", {}):  # DoRA: peft's own merge from the dequantised base
                weight = lora_layer.lora_variant[name].merge_safe(lora_layer, name, weight)
            else:
                weight = weight + lora_layer.get_delta_weight(name).to(dtype)
            if lora_layer.lora_bias.get(name) and bias is not None:
                bias = bias + lora_layer.lora_B[name].bias
    return weight.to(dtype), bias


def dequantize_merge(model: nn.Module) -> nn.Module:
    """A plain transformers model from a quantised one (a peft model or not): every bitsandbytes layer becomes
    an ``nn.Linear`` holding its de-quantised weight plus its adapter's delta (see the module docstring)."""
    bnb = _loaded_bnb()
    types = _bnb_layer_types()
    merged: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        from peft.tuners.lora import LoraLayer  # peft is a core dependency; imported with the adapters it merges
        for mod in model.modules():
            if isinstance(mod, LoraLayer) and isinstance(mod.get_base_layer(), types):
                merged[id(mod.get_base_layer())] = _merged(mod)
        model = model.unload()  # the base model, its LoRA wrappers replaced by their (quantised) base layers
    for name, layer in list(model.named_modules()):
        if isinstance(layer, types):
            weight, bias = merged.get(id(layer)) or (dequantized_weight(layer).to(_compute_dtype(layer)),
                                                     layer.bias.detach() if layer.bias is not None else None)
            _set_parent(model, name, _plain_linear(layer, weight, bias))
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if flag in model.__dict__:
            delattr(model, flag)
    assert bnb is None or not is_quantized(model)
    return model


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the base's linear weights (quantised: the packed data plus its scales; tables several layers
    share, like nf4's code, counted once), without the output layer and the adapters' own ``lora_A`` /
    ``lora_B``; for measuring what quantisation saves."""
    bnb = _loaded_bnb()
    out_layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tensors: dict[tuple[int, int], int] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or mod is out_layer or "lora_" in name or name.endswith("lm_head"):
            continue
        found = [mod.weight]
        if bnb is not None and isinstance(mod, bnb.nn.Linear4bit) and mod.weight.quant_state is not None:
            found += _state_tensors(mod.weight.quant_state)
        elif bnb is not None and isinstance(mod, bnb.nn.Linear8bitLt):
            found.append(mod.weight.SCB if getattr(mod.weight, "SCB", None) is not None else mod.state.SCB)
        for t in found:
            if isinstance(t, torch.Tensor):
                tensors[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
    return sum(tensors.values())


def _state_tensors(state) -> list[torch.Tensor]:
    """The tensors of a 4-bit QuantState: absmax, code, and the nested state of double quantisation."""
    nested = getattr(state, "state2", None)
    return [getattr(state, "absmax", None), getattr(state, "code", None), getattr(state, "offset", None),
            *((nested.absmax, nested.code) if nested is not None else ())]
