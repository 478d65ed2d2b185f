"""The `quill` command: argument parsing only; each verb calls one function in the module that owns it."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

from quill import __version__
from quill.config import FORM_CHOICES, FORM_OFF, GenerationConfig  # the settings: one definition, help included
from quill.errors import QuillError


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    if required:
        p.add_argument("config", help="pipeline YAML (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set stages.dapt.train.lr=5e-5 (repeatable)")


def _setting_help(key: str) -> str:
    return (GenerationConfig.model_fields[key].description or "").replace("%", "%%")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the run's generation settings)")
    g.add_argument("--temperature", type=float, help=_setting_help("temperature"))
    g.add_argument("--top-p", type=float, help=_setting_help("top_p"))
    g.add_argument("--top-k", type=int, help=_setting_help("top_k"))
    g.add_argument("--repetition-penalty", type=float, help=_setting_help("repetition_penalty"))
    g.add_argument("--max-new-tokens", type=int, help=_setting_help("max_new_tokens"))
    g.add_argument("--seed", type=int, help=_setting_help("seed"))
    _form_args(p)


def _form_args(p: argparse.ArgumentParser, defaults: str = "the run's generation settings") -> None:
    g = p.add_argument_group(f"the poem's shape: form-aware decoding (defaults: {defaults})")
    g.add_argument("--form", choices=[*FORM_CHOICES, *FORM_OFF], help=_setting_help("form"))
    g.add_argument("--lines", type=int, help=_setting_help("lines"))
    g.add_argument("--rhyme", metavar="SCHEME", help=_setting_help("rhyme"))
    g.add_argument("--meter", metavar="METER", help=_setting_help("meter"))
    g.add_argument("--retries", type=int, help=_setting_help("retries"))
    g.add_argument("--best-of", type=int, help=_setting_help("best_of"))


def _backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding backend (defaults: $QUILL_GEN_BACKEND, $QUILL_GEN_QUANT, else auto, q8_0)")
    g.add_argument("--backend", choices=["torch", "llama.cpp", "auto"],
                   help="llama.cpp: run the forward pass in llama.cpp on a cached GGUF export (CPU, batch 1, "
                        "~3x faster; needs llama-cpp-python, the 'llama' extra); auto (default): llama.cpp "
                        "when it is installed and the model is on a CPU, else torch")
    g.add_argument("--quant", help="weights: torch int8 or none; llama.cpp f32, f16, q8_0 (default), q5_0, q5_1, "
                                   "q4_0, q4_1")


def _backend(args) -> dict:
    return {"backend": args.backend or os.environ.get("QUILL_GEN_BACKEND") or "auto", "quantize": args.quant}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quill", description="quill: turn a small open language model into a "
                                     "conversational poet.")
    parser.add_argument("--version", action="version", version=f"quill {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (and what -v shows)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' own progress bars, warnings and deprecation notices")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    # ---- data
    p = sub.add_parser("data", help="look at the data before training")
    dsub = p.add_subparsers(dest="data_verb", metavar="ACTION")
    p = dsub.add_parser("inspect", help="data report and formatted training examples with loss tokens marked")
    _config_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--examples", type=int, default=2, help="formatted examples per stage")
    p.add_argument("--stage", help="only this stage")

    # ---- training
    p = sub.add_parser("train", help="run a pipeline config (both stages)")
    _config_args(p)
    p.add_argument("--run-dir", help="write the run here (default: OUTPUT_DIR/NAME from the config)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and print each stage's estimated peak memory per device (weights, "
                        "grads, optimizer, activations) for single, ddp, zero2 and zero3/fsdp on 1-8 devices, "
                        "QLoRA included; reads the model's config.json only, trains and writes nothing")
    p = sub.add_parser("demo", help="the embedded offline demo: SmolLM2-135M, Gutenberg passages, both stages")
    p.add_argument("--config", help="another pipeline YAML instead of the embedded configs/demo.yaml")
    _config_args(p, required=False)
    p.add_argument("--run-dir", default="runs/demo")
    p = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    p.add_argument("run", help="run folder")

    # ---- evaluation
    p = sub.add_parser("eval", help="losses, poetry metrics and samples for base / each stage; report.md/html")
    p.add_argument("run", help="run folder")
    p.add_argument("--samples", type=int, help="seeds per prompt (default: config eval.samples_per_prompt, 3)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--quick", action="store_true", help="the reference's two prompts only")
    p.add_argument("--models", help="comma-separated subset of base and the stage names (default: all)")
    p.add_argument("--decode", help="plain, form or plain,form (default: config eval.decode, plain,form): "
                                    "form adds the poet decoded form-aware as '<model>+form'")
    p.add_argument("--best-of", type=int, help="samples per (prompt, seed); keep the best by poetic score")
    p.add_argument("--batch-size", type=int, help="rows decoded at once (default: eval.batch_size)")
    p.add_argument("--losses", action=argparse.BooleanOptionalAction, default=True,
                   help="the loss/perplexity table (--no-losses skips it)")
    p = sub.add_parser("sweep", help="train every point of a grid and tabulate losses and metrics")
    _config_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="grid axis, e.g. --grid stages.dapt.train.lr=1e-4,5e-5 (repeatable)")
    p.add_argument("--out", help="sweep folder (default: OUTPUT_DIR/NAME-sweep)")
    p.add_argument("--no-eval", action="store_true", help="skip poetry metrics per point")
    p = sub.add_parser("pairs", help="preference pairs for a dpo stage: n poems per prompt from the run's last "
                                     "model, best vs worst by poetic score")
    p.add_argument("run", help="run folder")
    p.add_argument("--prompts", default="suite",
                   help="suite (default): the prompts of the run's training data; forms: requests for haiku, "
                        "limericks, sonnets, rhyme schemes, meters and line counts on topics the eval suite does not "
                        "use; or FILE: one prompt per line, or .jsonl rows with a 'prompt' field (eval-suite "
                        "prompts are always taken out)")
    p.add_argument("--n", type=int, default=4, help="poems per prompt (at least 2)")
    p.add_argument("--out", default="pairs.jsonl", help="preference records (prompt, chosen, rejected, scores)")
    p.add_argument("--min-margin", type=float, default=0.05,
                   help="drop pairs whose best and worst poetic scores differ by less (counted)")
    p.add_argument("--max-prompts", type=int, help="only the first N prompts")
    p.add_argument("--form", type=int, default=0, metavar="K",
                   help="decode K of the n poems per prompt form-aware (form: auto), the rest plain (default 0)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--batch-size", type=int, help="rows decoded at once (default: eval.batch_size)")
    p = sub.add_parser("compare", help="several runs side by side in one table and one HTML page")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="compare", help="folder for compare.md / compare.html / compare.csv")

    # ---- talking to the poet
    p = sub.add_parser("generate", help="one answer from a run (or any model)")
    p.add_argument("run", help="run folder, checkpoint folder or model name")
    p.add_argument("prompt")
    p.add_argument("--continue", dest="raw", action="store_true", help="raw completion: continue the text")
    _sampling_args(p)
    _backend_args(p)
    p = sub.add_parser("chat", help="multi-turn chat in the terminal (/reset, /save FILE, /set KEY VALUE)")
    p.add_argument("run")
    _sampling_args(p)
    _backend_args(p)
    p = sub.add_parser("serve", help="OpenAI-compatible API and web page (chat + blind A/B arena)")
    p.add_argument("runs", nargs="+", help="run folders, checkpoint folders or model names; NAME=PATH to name one")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("QUILL_API_KEY"), help="require this bearer key")
    p.add_argument("--arena-db", help="SQLite file for arena votes (default: in the first run folder)")
    g = p.add_argument_group("limits (a request beyond one gets a 4xx)")
    g.add_argument("--max-body-bytes", type=int, default=1_000_000)
    g.add_argument("--max-prompt-chars", type=int, default=32_000)
    g.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for")
    g.add_argument("--max-concurrent", type=int, default=32, help="queued + running generations per model (429 beyond)")
    g.add_argument("--generation-timeout", type=float, default=300.0, help="seconds before a generation is cut")
    _form_args(p, defaults="each run's generation settings; a request's own fields win")
    _backend_args(p)
    p = sub.add_parser("export", help="the poet for other tools: a GGUF (llama.cpp, LM Studio), an Ollama "
                                      "Modelfile + GGUF, or a Hugging Face folder (vLLM, transformers)")
    p.add_argument("run", help="run folder (its last stage's model) or checkpoint folder")
    p.add_argument("--to", required=True, choices=["gguf", "ollama", "hf"])
    p.add_argument("--quant", help="gguf/ollama: f32, f16, q8_0 (default), q5_0, q5_1, q4_0, q4_1; "
                                   "hf: the weights' dtype, f32, f16 or bf16 (default: as trained)")
    p.add_argument("--out", help="output folder (default: RUN/export/<to>)")
    p.add_argument("--name", help="model name in the files and the `ollama create` line (default: the run's)")
    p = sub.add_parser("arena", help="arena results")
    asub = p.add_subparsers(dest="arena_verb", metavar="ACTION")
    p = asub.add_parser("results", help="win rates per pair of models")
    p.add_argument("db")
    return parser


def _sampling(args) -> dict:
    return {k: getattr(args, k) for k in GenerationConfig.model_fields if getattr(args, k, None) is not None}


def dispatch(args) -> int | None:
    # Each verb imports its module only when it runs: most pull in torch, transformers or fastapi, which would
    # make every `quill --help` take seconds (the lightest, the arena store and the limits, add ~70 ms of asyncio).
    verb = args.verb
    if verb == "data":
        from quill.data.inspection import run_inspect
        from quill.models import load_tokenizer
        return run_inspect(args.config, args.overrides, as_json=args.json, examples=args.examples, stage=args.stage,
                           load_tokenizer=lambda m: load_tokenizer(m.name, trust_remote_code=m.trust_remote_code,
                                                                   revision=m.revision))
    if verb == "train" and args.dry_run:
        from quill.train.memory import dry_run
        return dry_run(args.config, args.overrides)
    if verb == "train":
        from quill.train.pipeline import train_from_config
        train_from_config(args.config, args.overrides, run_dir=args.run_dir, overwrite=args.overwrite)
        return 0
    if verb == "demo":
        from quill.train.pipeline import run_demo
        run_demo(args.config, args.overrides, run_dir=args.run_dir)
        return 0
    if verb == "resume":
        from quill.train.pipeline import resume_run
        resume_run(args.run)
        return 0
    if verb == "eval":
        from quill.evaluate.run import run_eval
        run_eval(args.run, samples=args.samples, max_new_tokens=args.max_new_tokens, quick=args.quick,
                 losses=args.losses, models=args.models, decode=args.decode, best_of=args.best_of,
                 batch_size=args.batch_size)
        return 0
    if verb == "sweep":
        from quill.apps.sweep import run_sweep
        run_sweep(args.config, args.overrides, grid=args.grid, out=args.out, with_eval=not args.no_eval)
        return 0
    if verb == "pairs":
        from quill.apps.pairs import make_pairs
        make_pairs(args.run, prompts=args.prompts, n=args.n, out=args.out, min_margin=args.min_margin,
                   max_prompts=args.max_prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                   form=args.form)
        return 0
    if verb == "compare":
        from quill.evaluate.compare import run_compare
        run_compare(args.runs, out=args.out)
        return 0
    if verb == "generate":
        from quill.apps.generate_cli import run_generate
        return run_generate(args.run, args.prompt, raw=args.raw, **_backend(args), **_sampling(args))
    if verb == "chat":
        from quill.apps.chat import run_chat
        return run_chat(args.run, **_backend(args), **_sampling(args))
    if verb == "serve":
        from quill.apps.limits import ServeLimits
        from quill.apps.server import run_server
        limits = ServeLimits(max_body_bytes=args.max_body_bytes, max_prompt_chars=args.max_prompt_chars,
                             max_tokens=args.max_tokens, max_concurrent=args.max_concurrent,
                             generation_timeout_s=args.generation_timeout)
        return run_server(args.runs, host=args.host, port=args.port, api_key=args.api_key, arena_db=args.arena_db,
                          limits=limits, defaults=_sampling(args), **_backend(args))
    if verb == "export":
        from quill.apps.export import run_export
        run_export(args.run, to=args.to, quant=args.quant, out=args.out, name=args.name)
        return 0
    if verb == "arena":
        from quill.apps.arena import print_results
        return print_results(args.db)
    return None


def quiet_libraries() -> None:
    """quill prints its own progress (stage, step, loss, tokens/s, ETA); the libraries' repeated "Loading
    weights" / "Converting GGUF tensors" bars, advisory log lines and deprecation warnings are hidden (set
    through their environment switches, read when they are imported; -v or --debug keeps them)."""
    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    if "transformers" in sys.modules:  # already imported (an embedding program, the tests): switch it directly
        sys.modules["transformers"].utils.logging.disable_progress_bar()
        sys.modules["transformers"].utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.verbose or args.debug):
        quiet_libraries()
    if args.verb is None or (args.verb == "data" and args.data_verb is None) or \
            (args.verb == "arena" and args.arena_verb is None):
        parser.print_help()
        return 0 if args.verb is None else 2
    try:
        rc = dispatch(args)
    except QuillError as err:
        if args.debug:
            traceback.print_exc()
        print(f"quill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quill: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
