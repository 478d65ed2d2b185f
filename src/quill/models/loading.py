"""Loading tokenizers, base models, checkpoints and servable models, with one-line errors.

Pad token: when a tokenizer has none, pad = EOS. That is safe here because quill's collators mask padding by
``attention_mask`` and ``labels`` (built explicitly by the template), never by comparing ids to the pad id —
the usual "pad == eos, so the EOS is masked and the model never learns to stop" pitfall cannot happen.
Padding side stays the tokenizer's default; generation (left padding) is the generator's business.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Short hub timeouts so a bad connection fails in seconds, not minutes (read when huggingface_hub is imported).
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")

import torch  # noqa: E402

from quill.config import GenerationConfig, ModelConfig  # noqa: E402
from quill.data.template import TEMPLATE_FILE, PromptTemplate, template_for  # noqa: E402
from quill.errors import ModelError  # noqa: E402
from quill.models.precision import resolve_dtype  # noqa: E402
from quill.models.presets import looks_like_hub_id, resolve_model_path  # noqa: E402
from quill.network import hub_offline  # noqa: E402
from quill.models.saving import read_generation  # noqa: E402
from quill.run import RunFolder  # noqa: E402


def _hub_kwargs(path: str, revision: str | None = None) -> dict:
    """``local_files_only`` for hub ids when offline, so loads use the HF cache or fail at once."""
    if looks_like_hub_id(path):
        return {"revision": revision, "local_files_only": hub_offline()}
    return {"local_files_only": True}


def _load(name: str, path: str, kwargs: dict, fn):
    """Call a ``from_pretrained`` and turn its failures into one-line ModelErrors."""
    try:
        return fn(path, **kwargs)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ModelError(f"{name}: needs to run custom code from its repository; set "
                             "model.trust_remote_code: true if you trust it") from None
        raise ModelError(f"{name}: {str(err).splitlines()[0]}") from None
    except OSError as err:
        if looks_like_hub_id(path) and kwargs.get("local_files_only"):
            raise ModelError(f"cannot download {name}: no network; use a preset like smollm2-135m or a local "
                             "folder") from None
        first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ModelError(f"{name}: cannot load ({first})") from None


def _ensure_pad(tokenizer):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # safe: see the module docstring
    return tokenizer


def load_tokenizer(name: str, trust_remote_code: bool = False, revision: str | None = None):
    """The tokenizer of a preset / folder / hub id / checkpoint, with a pad token set."""
    from transformers import AutoTokenizer
    path = resolve_model_path(name)
    kwargs = {**_hub_kwargs(path, revision), "trust_remote_code": trust_remote_code}
    return _ensure_pad(_load(name, path, kwargs, AutoTokenizer.from_pretrained))


def _load_model(name: str, path: str, kwargs: dict, attn: str):
    from transformers import AutoModelForCausalLM
    attn_impl = "sdpa" if attn == "auto" else attn
    try:
        return _load(name, path, {**kwargs, "attn_implementation": attn_impl}, AutoModelForCausalLM.from_pretrained)
    except ModelError as err:
        if attn != "auto" or "sdpa" not in str(err).lower():
            raise
        return _load(name, path, {**kwargs, "attn_implementation": "eager"}, AutoModelForCausalLM.from_pretrained)


def load_base(model_cfg: ModelConfig, dtype: Any = None):
    """(model, tokenizer, template) for a base model. Remote code is refused unless the config allows it."""
    from transformers import AutoConfig
    name, trust = model_cfg.name, model_cfg.trust_remote_code
    path = resolve_model_path(name)
    kwargs = {**_hub_kwargs(path, model_cfg.revision), "trust_remote_code": trust}
    config = _load(name, path, kwargs, AutoConfig.from_pretrained)  # fails fast on remote code / offline
    tokenizer = load_tokenizer(name, trust_remote_code=trust, revision=model_cfg.revision)
    model = _load_model(name, path, {**kwargs, "config": config, "dtype": resolve_dtype(dtype)},
                        model_cfg.attn_implementation)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if model_cfg.template == "auto" and (Path(path) / TEMPLATE_FILE).is_file():
        return model, tokenizer, PromptTemplate.load(path)  # a quill checkpoint: the template it trained with
    return model, tokenizer, template_for(tokenizer, model_cfg.template)


def load_checkpoint(folder: str | Path, dtype: Any = None):
    """(model, tokenizer, template, generation dict) from a folder written by ``save_model``.
    Safetensors only: a checkpoint is never unpickled."""
    from transformers import AutoTokenizer
    folder = Path(folder)
    template = PromptTemplate.load(folder)  # ModelError when it is not a quill checkpoint
    tokenizer = _ensure_pad(_load(str(folder), str(folder), {"local_files_only": True}, AutoTokenizer.from_pretrained))
    model = _load_model(str(folder), str(folder), {"local_files_only": True, "use_safetensors": True,
                                                   "dtype": resolve_dtype(dtype)}, "auto")
    return model, tokenizer, template, read_generation(folder)


@dataclass
class Servable:
    """Everything chat / serve / eval need to generate from one model."""
    name: str
    model: Any
    tokenizer: Any
    template: PromptTemplate
    generation: dict = field(default_factory=dict)
    context_length: int = 2048


def find_run_model(run: str | Path) -> tuple[str, Path]:
    """(stage, RUN/<stage>/model) of the last stage (``summary.json`` stage_order, else config.yaml order)
    that has a saved model; an unfinished run serves its latest finished stage."""
    return RunFolder(run).last_model()


def _context_length(model, tokenizer) -> int:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    return min(int(getattr(tokenizer, "model_max_length", 2048)), 1 << 20)


def load_for_inference(spec: str, dtype: Any = None, device: str | None = None) -> Servable:
    """A model ready to generate (eval mode, on ``device``: default cuda if available): ``spec`` is a run
    folder (its last stage's model), a checkpoint folder (has template.json), or a model name / preset."""
    path = Path(spec).expanduser()
    run = RunFolder(path)
    if path.is_dir() and (path / TEMPLATE_FILE).is_file():
        name = path.parent.name if path.name == "model" else path.name
        model, tokenizer, template, generation = load_checkpoint(path, dtype)
    elif path.is_dir() and (run.is_run() or run.summary_path.is_file()):
        stage, folder = run.last_model()
        name = f"{path.resolve().name}/{stage}"
        model, tokenizer, template, generation = load_checkpoint(folder, dtype)
    else:
        name = spec
        model, tokenizer, template = load_base(ModelConfig(name=spec), dtype)
        generation = GenerationConfig().model_dump()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    return Servable(name, model, tokenizer, template, generation, _context_length(model, tokenizer))
