"""Who writes what when several processes, on one machine or several, train one run.

- The **main process** (global rank 0) writes the run's record: metrics, TensorBoard, samples, the summary
  and the checkpoints. On resume it alone reads the checkpoint and sends it to the others (:func:`share`),
  so no other process needs to see the main process's disk.
- **Each copy of the run folder** needs what every process reads: ``config.yaml``, the prepared data and the
  stage models (a resumed run restores completed stages from them). If the machines share one disk there is
  one copy, the main process's. If each machine has its own disk, the first process of each machine (its
  *local main*) writes that machine's copy. :func:`writes_copy` finds out which: the main process writes a
  token into its folder, sends the token to everyone, and a local main that does not find it in its own
  folder is on a disk of its own.

So two machines sharing a disk never prepare the same data twice (no race), and two machines with
separate disks each have what their processes read.
"""
from __future__ import annotations

import secrets
import shutil

from accelerate.utils import broadcast_object_list

from quill.errors import RunError
from quill.files import atomic_write_text
from quill.run import RunFolder


def share(obj, accelerator):
    """The main process's ``obj`` on every process (pickled; small things: paths, states, summaries)."""
    if accelerator.num_processes == 1:
        return obj
    return broadcast_object_list([obj if accelerator.is_main_process else None])[0]


def writes_copy(run: RunFolder, accelerator, fresh: bool) -> bool:
    """Whether this process writes its disk's copy of the run folder (collective). ``fresh``: a new run (not a
    resume): a copy of its own is cleared first, as the main process cleared its folder for ``--overwrite``."""
    if accelerator.num_processes == 1:
        return True
    token = secrets.token_hex(16) if accelerator.is_main_process else None
    if token:
        atomic_write_text(run.main_token, token)
    token = share(token, accelerator)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        return True
    if not accelerator.is_local_main_process:
        return False
    own = not run.main_token.exists() or run.main_token.read_text() != token
    if own and fresh and any(run.path.iterdir()):  # a stale copy: the main process decided to start over
        if not run.is_run():
            raise RunError(f"{run.path}: this machine's run folder holds files that are not a quill run; "
                           "give the run a folder of its own")
        shutil.rmtree(run.path)
        run.path.mkdir(parents=True)
    return own
