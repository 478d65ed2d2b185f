"""``quill export RUN --to gguf|ollama|hf``: the poet in the files other tools load.

* ``gguf``: one file with the weights (``--quant``, default q8_0), the tokenizer, quill's template as
  ``tokenizer.chat_template`` (jinja) and its end-of-turn token as EOS (``quill.models.gguf_export``): for
  llama.cpp (``llama-cli -m FILE -cnv``), LM Studio, or any GGUF runner.
* ``ollama``: that GGUF plus a ``Modelfile`` (``quill.apps.ollama``: the template in Go syntax, stop tokens,
  the run's sampling settings); prints the ``ollama create`` line.
* ``hf``: the merged model folder (safetensors, tokenizer with ``chat_template``, ``generation_config.json``
  stopping at the end-of-turn), for ``vllm serve DIR``, TGI or ``transformers.pipeline``; ``--quant`` here is
  the weights' dtype (f32, f16, bf16; default as trained).

Output goes to ``RUN/export/<to>/`` unless ``--out`` says otherwise; every file is written atomically, and the
paths and sizes are printed at the end.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from tqdm.auto import tqdm

from quill.apps.ollama import modelfile
from quill.errors import QuillError
from quill.files import atomic_path, atomic_write_text
from quill.models import load_for_inference, save_model, write_gguf
from quill.models.gguf_export import QUANT_TYPES, check_exportable, tensor_count
from quill.run import RunFolder

TARGETS = ("gguf", "ollama", "hf")
HF_DTYPES = {"f32": "fp32", "fp32": "fp32", "f16": "fp16", "fp16": "fp16", "bf16": "bf16"}
DEFAULT_QUANT = "q8_0"


def _slug(text: str) -> str:
    """A name Ollama and file systems accept: lower-case letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.") or "poet"


def _default_out(run: str, to: str) -> Path:
    folder = RunFolder(run)
    if folder.is_run():
        return folder.export_dir(to)
    return Path(run) / "export" / to  # a checkpoint folder: beside its files


def _size(path: Path) -> str:
    n = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _write_gguf_file(servable, target: Path, name: str, quant: str) -> Path:
    with tqdm(total=tensor_count(servable.model), desc=f"gguf {quant}", unit="tensor") as bar, atomic_path(target) as tmp:
        write_gguf(servable.model, servable.tokenizer, tmp, quant, name=name, template=servable.template,
                   progress=bar.update)
    return target


def export(run: str, to: str, quant: str | None = None, out: str | None = None,
           name: str | None = None) -> tuple[list[Path], str | None]:
    """Write the export; (files written, the command that loads them, if any)."""
    if to not in TARGETS:
        raise QuillError(f"--to {to!r}: use one of {', '.join(TARGETS)}")
    if to == "hf":
        if quant is not None and quant not in HF_DTYPES:
            raise QuillError(f"--quant {quant!r}: for --to hf it is the weights' dtype ({', '.join(HF_DTYPES)})")
    elif (quant or DEFAULT_QUANT) not in QUANT_TYPES:
        raise QuillError(f"--quant {quant!r}: not a GGUF type here (use {', '.join(QUANT_TYPES)})")
    servable = load_for_inference(run, device="cpu")
    name = _slug(name or servable.name.replace("/", "-"))
    folder = Path(out) if out else _default_out(run, to)
    folder.mkdir(parents=True, exist_ok=True)
    if to == "hf":
        target = folder if out else folder / name
        save_model(target, servable.model, servable.tokenizer, servable.template, servable.generation,
                   dtype=HF_DTYPES[quant] if quant else None)
        return [target], f"vllm serve {target}   # or transformers.pipeline('text-generation', model='{target}')"
    quant = quant or DEFAULT_QUANT
    gguf = folder / f"{name}-{quant}.gguf"
    check_exportable(servable.model, servable.tokenizer, servable.name)  # before any file is written
    text = modelfile(gguf.name, servable.template, servable.tokenizer, servable.generation) if to == "ollama" else ""
    _write_gguf_file(servable, gguf, name, quant)
    if to == "gguf":
        return [gguf], f"llama-cli -m {gguf} -cnv   # llama.cpp's chat, with the embedded template"
    atomic_write_text(folder / "Modelfile", text)
    return [gguf, folder / "Modelfile"], f"cd {folder} && ollama create {name} -f Modelfile && ollama run {name}"


def run_export(run: str, to: str, quant: str | None = None, out: str | None = None, name: str | None = None) -> None:
    t0 = time.perf_counter()
    files, command = export(run, to, quant, out, name)
    print(f"exported {run} to {to} in {time.perf_counter() - t0:.1f} s:")
    for path in files:
        print(f"  {path}  {_size(path)}")
    if command:
        print(f"next: {command}")
