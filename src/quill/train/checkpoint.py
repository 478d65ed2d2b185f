"""Resumable training state, written atomically.

A checkpoint folder holds what an uninterrupted run would still have in memory:
- ``trainable.safetensors``: the trainable weights (the LoRA matrices, or every weight in full fine-tuning);
- ``optimizer.pt`` / ``scheduler.pt``: their state dicts, loaded back with ``torch.load(weights_only=True)``
  (tensors and numbers only: no pickled code);
- ``rng-<rank>.safetensors`` and ``state.json``: random number generator states (LoRA dropout draws from
  them), the optimizer step, and the data position (epoch and micro-batch index).

Rank 0 alone writes it (the other ranks send it their parts), to ``<name>.tmp``, renamed over the previous one
(``quill.files.atomic_dir``), so a kill at any moment leaves either the old or the new checkpoint whole —
never a mix; a kill between the two renames leaves the old one as ``<name>.old``, where
:func:`find_checkpoint` looks too.
"""
from __future__ import annotations

import errno
import random
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

from quill.errors import RunError
from quill.files import atomic_dir, atomic_write_json, read_json
from quill.train.faults import fault_point
from quill.train.nodes import share
from quill.train.sharding import full_state, load_full_state


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: dict, accelerator=None,
                    sharded: bool = False) -> None:
    """Rank 0 writes the whole checkpoint into the temp folder and renames it over the last one. The other
    ranks send it their RNG states and, under FSDP (``sharded``), their shards, gathered whole: the files are
    the same whatever the number of processes, and no other rank needs to see the disk (``train.nodes``)."""
    folder = Path(folder)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    rngs = _gather((_rng_tensors(), {"python": _py_state(), "numpy": _np_state()}), accelerator)
    weights, optim = full_state(model, optimizer) if sharded else (None, None)  # collective
    if rank == 0:
        if not sharded:
            weights, optim = trainable_state(model), optimizer.state_dict()
        _write(folder, weights, optim, scheduler, {**state, "world_size": world, "sharded": sharded}, rngs)
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _write(folder: Path, weights: dict, optim: dict, scheduler, state: dict, rngs: list) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    try:
        with atomic_dir(folder, tmp=tmp, old=_previous(folder), fsync_parent=True,
                        before_swap=lambda: fault_point("checkpoint:rename")):
            fault_point("checkpoint:begin")
            for r, (tensors, extra) in enumerate(rngs):
                save_file(tensors, str(tmp / f"rng-{r}.safetensors"))
                atomic_write_json(tmp / f"rng-{r}.json", extra)
            save_file(weights, str(tmp / "trainable.safetensors"))
            fault_point("checkpoint:weights")
            torch.save(optim, tmp / "optimizer.pt")
            fault_point("checkpoint:optimizer")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            atomic_write_json(tmp / "state.json", state)  # last: marks the checkpoint complete
    except BaseException as err:
        # a full disk (or any write error): atomic_dir dropped the partial temp folder and kept the previous
        # checkpoint where find_checkpoint() looks for it; say so in one line instead of a traceback
        if _disk_full(err):
            raise RunError(f"no space left on device while saving checkpoint {folder}; the previous "
                           "checkpoint is intact: free some space and `quill resume` the run") from None
        if isinstance(err, OSError):
            raise RunError(f"cannot save checkpoint {folder}: {err.strerror or err}") from None
        raise


def _gather(obj, accelerator) -> list:
    """``obj`` of every rank, in rank order (on every rank)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [obj]
    return gather_object([obj])


def _previous(folder: Path) -> Path:
    return folder.with_name(folder.name + ".old")


def _disk_full(err: BaseException) -> bool:
    """ENOSPC as OSError, or as the text of the errors torch.save (RuntimeError: "file write failed") and
    safetensors (SafetensorError: "StorageFull" / "os error 28") raise for it."""
    if isinstance(err, OSError):
        return err.errno == errno.ENOSPC
    text = str(err)
    return isinstance(err, Exception) and any(k in text for k in (
        "No space left", "StorageFull", "os error 28", "code: 28", "file write failed"))


def find_checkpoint(folder: Path) -> Path | None:
    """The last complete checkpoint: the folder itself, or the previous one left by a kill mid-rename."""
    folder = Path(folder)
    for cand in (folder, _previous(folder)):
        if (cand / "state.json").exists():
            return cand
    return None


def load_checkpoint(folder: Path | None, model, optimizer, scheduler, accelerator=None, sharded: bool = False) -> dict:
    """Rank 0 reads the checkpoint (``folder``: rank 0's; other ranks pass what they like) and sends every rank
    its part; under FSDP the weights and optimizer state are scattered as shards. Returns ``state.json``."""
    rank = accelerator.process_index if accelerator else 0
    files = _read(Path(folder)) if rank == 0 else None
    big = (files.pop("weights"), files.pop("optimizer")) if sharded and rank == 0 else ({}, {})
    files = share(files, accelerator) if accelerator else files
    state = files["state"]
    if bool(state.get("sharded")) != sharded:  # optimizer state keyed by name (fsdp) or by position (ddp)
        saved = "fsdp" if state.get("sharded") else "ddp or one process"
        raise RunError(f"{files['folder']}: checkpoint written under {saved}; resume it with the same "
                       f"distributed.strategy")
    if sharded:
        load_full_state(model, optimizer, *big)  # collective
    else:
        params = dict(model.named_parameters())
        missing = [n for n in files["weights"] if n not in params]
        if missing:
            raise RuntimeError(f"{files['folder']}: checkpoint weights not in the model: {missing[:3]}")
        with torch.no_grad():
            for n, t in files["weights"].items():
                params[n].copy_(t.to(params[n].device, params[n].dtype))
        optimizer.load_state_dict(files["optimizer"])
    scheduler.load_state_dict(files["scheduler"])
    if rank < len(files["rng"]):
        _set_rng(*files["rng"][rank])
    return state


def _read(folder: Path) -> dict:
    rng, r = [], 0
    while (folder / f"rng-{r}.safetensors").exists():
        rng.append((load_file(str(folder / f"rng-{r}.safetensors")), read_json(folder / f"rng-{r}.json", {})))
        r += 1
    return {"folder": str(folder), "state": read_json(folder / "state.json"),
            "weights": load_file(str(folder / "trainable.safetensors")),
            "optimizer": torch.load(folder / "optimizer.pt", weights_only=True),
            "scheduler": torch.load(folder / "scheduler.pt", weights_only=True), "rng": rng}


def _set_rng(tensors: dict, extra: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    if extra:
        random.setstate(_to_py_state(extra["python"]))
        np.random.set_state(_to_np_state(extra["numpy"]))


def _py_state():
    v, internal, gauss = random.getstate()
    return [v, list(internal), gauss]


def _to_py_state(s):
    return (s[0], tuple(s[1]), s[2])


def _np_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _to_np_state(s):
    return (s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4])
