"""Resumable training state, written atomically.

A checkpoint folder holds what an uninterrupted run would still have in memory:
- ``trainable.safetensors``: the trainable weights (the LoRA matrices, or every weight in full fine-tuning);
- ``optimizer.pt`` / ``scheduler.pt``: their state dicts, loaded back with ``torch.load(weights_only=True)``
  (tensors and numbers only: no pickled code);
- ``rng-<rank>.safetensors`` and ``state.json``: random number generator states (LoRA dropout draws from
  them), the optimizer step, and the data position (epoch and micro-batch index).

It is written to ``<name>.tmp`` (one name: every rank writes into it) and renamed over the previous one
(``quill.files.atomic_dir``), so a kill at any moment leaves either the old or the new checkpoint whole —
never a mix; a kill between the two renames leaves the old one as ``<name>.old``, where
:func:`find_checkpoint` looks too.
"""
from __future__ import annotations

import contextlib
import errno
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from quill.errors import RunError
from quill.files import atomic_dir, atomic_write_json, read_json
from quill.train.faults import fault_point
from quill.train.sharding import full_state, load_full_state


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: dict, rank: int = 0,
                    world: int = 1, barrier=lambda: None, sharded: bool = False) -> None:
    """Every rank writes its RNG state into the temp folder; rank 0 writes the rest and renames it.
    ``sharded`` (FSDP): the weights and optimizer state are first gathered whole to rank 0 (every rank
    takes part), so the files are the same whatever the number of processes."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if rank == 0:
        staging = atomic_dir(folder, tmp=tmp, old=_previous(folder), fsync_parent=True,
                             before_swap=lambda: fault_point("checkpoint:rename"))
    else:
        staging = contextlib.nullcontext(tmp)
    try:
        with staging:
            if rank == 0:
                fault_point("checkpoint:begin")
            barrier()
            save_file(_rng_tensors(), str(tmp / f"rng-{rank}.safetensors"))
            atomic_write_json(tmp / f"rng-{rank}.json", {"python": _py_state(), "numpy": _np_state()})
            weights, optim = full_state(model, optimizer) if sharded else (None, None)
            if rank == 0:
                save_file(weights if sharded else trainable_state(model), str(tmp / "trainable.safetensors"))
                fault_point("checkpoint:weights")
                torch.save(optim if sharded else optimizer.state_dict(), tmp / "optimizer.pt")
                fault_point("checkpoint:optimizer")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            barrier()
            if rank == 0:
                atomic_write_json(tmp / "state.json", {**state, "world_size": world,  # last: marks complete
                                                       "sharded": sharded})
    except BaseException as err:
        # a full disk (or any write error): atomic_dir dropped the partial temp folder and kept the previous
        # checkpoint where find_checkpoint() looks for it; say so in one line instead of a traceback
        if _disk_full(err):
            raise RunError(f"no space left on device while saving checkpoint {folder}; the previous "
                           "checkpoint is intact: free some space and `quill resume` the run") from None
        if isinstance(err, OSError):
            raise RunError(f"cannot save checkpoint {folder}: {err.strerror or err}") from None
        raise
    barrier()


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


def load_checkpoint(folder: Path, model, optimizer, scheduler, rank: int = 0, sharded: bool = False) -> dict:
    folder = Path(folder)
    state = read_json(folder / "state.json")
    if bool(state.get("sharded")) != sharded:  # optimizer state keyed by name (fsdp) or by position (ddp)
        saved = "fsdp" if state.get("sharded") else "ddp or one process"
        raise RunError(f"{folder}: checkpoint written under {saved}; resume it with the same "
                       f"distributed.strategy")
    if sharded:
        load_full_state(model, optimizer, *((load_file(str(folder / "trainable.safetensors")),
                                             torch.load(folder / "optimizer.pt", weights_only=True))
                                            if rank == 0 else ({}, {})))
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        _load_rng(folder, rank)
        return state
    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(f"{folder}: checkpoint weights not in the model: {missing[:3]}")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    _load_rng(folder, rank)
    return state


def _load_rng(folder: Path, rank: int) -> None:
    rng_file = folder / f"rng-{rank}.safetensors"
    if rng_file.exists():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        extra = read_json(folder / f"rng-{rank}.json", {})
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
