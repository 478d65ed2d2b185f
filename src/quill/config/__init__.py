"""The typed pipeline config: one YAML file describes model, both stages, evaluation and generation.

Every model forbids unknown keys, so a typo is an error that names its key path
(``stages[0].train.lr: must be > 0``) instead of a setting that silently does nothing.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator


from quill.config.base import ConfigError, _Strict
from quill.config.data import CleanConfig, DataConfig, SplitConfig, SynthConfig  # noqa: F401 (re-exported)
from quill.config.dpo import DPOConfig
from quill.config.train import AdapterConfig, DistributedConfig, TrainConfig  # noqa: F401 (re-exported)
from quill.config.generation import (FORM_CHOICES, FORM_OFF, MAX_LINES, MAX_SEED, METER_FEET,  # noqa: F401
                                     METER_MEASURES, GenerationConfig)  # re-exported: quill.config is the door


# --------------------------------------------------------------------------- model
class ModelConfig(_Strict):
    name: str = Field("smollm2-135m", description="preset (smollm2-135m, gpt2, deepseek-coder-1.3b, tiny-llama, "
                      "tiny-gpt2), hub id, local folder or .gguf file")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) of the model and "
                                 "tokenizer; None: the default branch")
    template: str = Field("auto", description="auto: the model's own chat template, else quill's 'User:/Assistant:'; "
                          "or 'quill' / 'chatml' to force one")
    trust_remote_code: bool = Field(False, description="run model code from the hub; refused unless set")
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="attention kernel: auto is SDPA (eager where the model lacks it), and flex attention "
        "for packed training on GPUs where the architecture supports it")


class StageConfig(_Strict):
    name: str = Field(..., description="the stage's name: its folders in the run (data/NAME, NAME/model) "
                      "and --set stages.NAME.…; unique in a config")
    kind: Literal["dapt", "sft", "dpo"] = Field(..., description="dapt: language modelling on packed poems; sft: "
                                                "instruction pairs, loss on the answers only; dpo: preference pairs "
                                                "(needs data.kind: preferences, which only dpo takes)")
    data: DataConfig = Field(..., description="what the stage reads and how")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="LoRA or full fine-tuning")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the optimizer, batches and schedule")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="preference settings (kind: dpo only)")

    @model_validator(mode="after")
    def _kind_matches_data(self) -> "StageConfig":
        if (self.kind == "dpo") != (self.data.kind == "preferences"):
            raise ValueError(f"kind: dpo needs data.kind: preferences, and preferences data needs kind: dpo "
                             f"(got kind: {self.kind}, data.kind: {self.data.kind})")
        if self.kind != "dpo" and self.dpo != DPOConfig():  # defaults pass: config.yaml dumps them
            raise ValueError(f"dpo: settings for kind: dpo only (this stage is kind: {self.kind})")
        return self


# --------------------------------------------------------------------------- generation / eval
REFERENCE_PROMPTS = ["The sea is blue, the sky is red", "Write a poem about the sea and the sky"]


class EvalConfig(_Strict):
    prompts: list[str] = Field(default_factory=lambda: list(REFERENCE_PROMPTS),
                               description="sampled before and after each stage (summary.json), during training "
                               "(train_samples) and added to the eval suite")
    suite: str | None = Field("default", description="versioned sample suite for `quill eval` (None: prompts only)")
    samples_per_prompt: int = Field(3, gt=0, description="seeds per suite prompt (seed = generation.seed + "
                                    "1000 * prompt index + j); means come with 95% bootstrap intervals")
    max_batches: int | None = Field(None, gt=0, description="cap on batches per split for loss tables")
    train_batches: int | None = Field(2, gt=0, description="cap on batches of the train split in the loss "
                                      "table (an over-fitting check: a few batches tell; None: max_batches)")
    decode: list[Literal["plain", "form"]] = Field(
        default_factory=lambda: ["plain", "form"],
        description="decodings `quill eval` samples: plain, and form-aware (form: auto) as a '<model>+form' row")
    form_models: list[str] | None = Field(None, description="models evaluated with form-aware decoding too "
                                          "(None: the poet, i.e. the last stage)")
    batch_size: int = Field(48, gt=0, description="rows (prompt, seed) decoded at once; a finished row's slot "
                            "takes the next request (continuous batching)")
    best_of: int = Field(1, ge=1, le=16, description="samples per (prompt, seed); the best by poetic score is kept")
    train_samples: int = Field(2, ge=0, description="eval.prompts sampled at every evaluation during training "
                               "(mean poetic score logged; 0 = off)")
    train_max_new_tokens: int = Field(64, gt=0, description="token limit of those training-time samples")


class TrackingConfig(_Strict):
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"], description="accelerate trackers for the training metrics "
        "(tensorboard writes RUN/tb/)")


class PipelineConfig(_Strict):
    name: str = Field("quill", description="the run's name: its folder is OUTPUT_DIR/NAME")
    output_dir: str = Field("runs", description="runs are written to OUTPUT_DIR/NAME")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the base model every stage starts from")
    stages: list[StageConfig] = Field(..., description="the stages, run in order, each starting from the "
                                      "model the previous one left (at least one)")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="sampling and form "
                                         "settings, saved in each checkpoint's generation_config.json")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="what `quill eval` and training-time "
                             "samples measure")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="where training metrics go")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="how several "
                                           "processes (torchrun, accelerate launch) share the training")
    sweep: dict[str, list[Any]] = Field(default_factory=dict, description="grid for `quill sweep`: "
                                        "dotted key -> values")

    @model_validator(mode="after")
    def _unique_stage_names(self) -> "PipelineConfig":
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if not self.stages:
            raise ValueError("at least one stage is needed")
        return self

    @model_validator(mode="after")
    def _sharding_combinations(self) -> "PipelineConfig":
        check_strategy(self, self.distributed.strategy)
        return self

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


def check_strategy(cfg: PipelineConfig, strategy: str) -> None:
    """What sharded training does not do (yet), named by its keys before anything runs; also called at launch,
    where ``strategy: auto`` has become what the launcher asked for."""
    if strategy != "fsdp":
        return
    for i, s in enumerate(cfg.stages):
        where = f"distributed.strategy {strategy} with stages[{i}]"
        if s.adapter.quantize:
            raise ValueError(f"{where}.adapter.quantize {s.adapter.quantize}: QLoRA's quantised base is not "
                             "sharded; train it on one device (what QLoRA is for) or drop quantize")
        if s.train.compile == "on":
            raise ValueError(f"{where}.train.compile on: compiled blocks are not combined with sharding; "
                             "use compile: auto (off when sharded) or off")
        if s.train.precision == "fp16":
            raise ValueError(f"{where}.train.precision fp16: its gradient scaler is not sharded; use bf16 or fp32")
        if s.kind == "dpo":
            raise ValueError(f"{where}.kind dpo: preference stages train with ddp (strategy: ddp or auto)")


# --------------------------------------------------------------------------- loading
def _path_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        template = _MESSAGES.get(e["type"])
        msg = template.format(**e.get("ctx", {})) if template else e["msg"].removeprefix("Value error, ")
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
        lines.append(f"{_path_str(loc)}: {msg}")
    return "\n".join(lines)


def validate(raw: dict) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``a.b[0].c=value`` or ``stages.dapt.train.lr=5e-5`` (stages addressed by name or index)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE")
    key, value_text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value is not valid YAML ({str(err).splitlines()[0]})") from None
    parts = [p for p in key.replace("[", ".").replace("]", "").split(".") if p]
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part, key)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:i])}' is not a section")


def _list_index(node: list, part: str, key: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(node) <= idx < len(node):
            raise ConfigError(f"--set {key}: index {idx} out of range")
        return idx
    for idx, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == part:
            return idx
    names = [item.get("name") for item in node if isinstance(item, dict)]
    raise ConfigError(f"--set {key}: no entry named '{part}' (have {names})")


def resolve_config_path(path: str | Path) -> Path:
    """A config file, or the name of one shipped in the package (``gpt2-reference`` -> quill/configs/…yaml)."""
    candidate = Path(path)
    if candidate.exists():
        return candidate
    name = str(path)
    if "/" not in name and "\\" not in name and packaged_config(name.removesuffix(".yaml")).is_file():
        return packaged_config(name.removesuffix(".yaml"))
    shipped = ", ".join(packaged_configs())
    raise ConfigError(f"{path}: config file not found (shipped configs, usable by name: {shipped})")


def config_base_dir(path: str | Path) -> Path:
    """Where a config's relative paths (data sources, a model folder) are read from: the folder of a user's
    config file, and the working directory for a shipped one (``demo-dpo`` reads ``runs/demo/...`` there)."""
    resolved = resolve_config_path(path).resolve()
    shipped = packaged_config(resolved.stem).resolve()
    return Path.cwd() if resolved == shipped else resolved.parent


def load_raw(path: str | Path) -> dict:
    path = resolve_config_path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    raw = copy.deepcopy(load_raw(path))
    for item in overrides or []:
        apply_override(raw, item)
    try:
        return validate(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}:\n{err}") from None


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def packaged_config(name: str) -> Path:
    """Path of a config shipped inside the package (``demo`` -> quill/configs/demo.yaml)."""
    return Path(__file__).parent.parent / "configs" / f"{name}.yaml"


def packaged_configs() -> list[str]:
    """Names of the configs shipped inside the package (``configs/`` at the repository root links to them)."""
    return sorted(p.stem for p in (Path(__file__).parent.parent / "configs").glob("*.yaml"))
