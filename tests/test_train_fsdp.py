"""Sharded training (``distributed.strategy: fsdp``): two CPU processes over gloo against one process.

FSDP2 (torch's ``fully_shard``, applied by accelerate) shards the weights, gradients and optimizer states;
the loss module is its root, so the fused vocabulary projection reads the gathered output layer. These
runs drive the real launcher (torchrun), the real pipeline and the real checkpoint files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from quill.config import ConfigError, load_config
from quill.train.pipeline import train
from tests_support import quill

pytestmark = pytest.mark.slow
TINY = Path(__file__).parent / "fixtures" / "train" / "tiny.yaml"
# stage 1 trains a LoRA adapter (the frozen base is sharded too), stage 2 every weight, without a val split
# (so no evaluation gathers its weights before the end of the stage); tiny.yaml's one prompt is sampled at
# every evaluation (FSDP gathers the weights for it) and after training
MIXED = ["--set", "stages.dapt.train.max_steps=2", "--set", "stages.sft.train.max_steps=2",
         "--set", "stages.sft.adapter.method=full", "--set", "stages.sft.data.split.val=0"]
TWO = ["--set", "stages.dapt.train.grad_accum=1", "--set", "stages.sft.train.grad_accum=1",
       "--set", "distributed.strategy=fsdp"]  # 2 processes x 1 micro-batch: the same global batch as 1 x 2


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def torchrun(*args, port: int, env=None, nodes: tuple[int, int] | None = None, check=True):
    """``torchrun --nproc_per_node 2 -m quill.cli ARGS``; ``nodes=(n, rank)``: one process of an n-node job."""
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    layout = (["--nnodes", str(nodes[0]), "--node_rank", str(nodes[1]), "--nproc_per_node", "1",
               "--master_addr", "127.0.0.1"] if nodes else ["--nproc_per_node", "2"])
    cmd = [sys.executable, "-m", "torch.distributed.run", *layout, "--master_port", str(port),
           "-m", "quill.cli", *map(str, args)]
    if nodes:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=300)  # a collective out of step hangs
    if check and p.returncode != 0:
        raise AssertionError(f"torchrun {args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def assert_same_losses(a: dict, b: dict, tol: float) -> None:
    for stage, st in a["stages"].items():
        for k in ("train_loss", "val_loss_before", "val_loss_after", "test_loss"):
            if st.get(k) is not None:
                assert b["stages"][stage][k] == pytest.approx(st[k], abs=tol), (stage, k)


def assert_same_weights(a: Path, b: Path, tol: float) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    worst = max((x[k] - y[k]).abs().max().item() for k in x)
    assert worst <= tol, (a, worst)


def test_fsdp_lora_and_full_fine_tuning_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    quill("train", TINY, "--run-dir", one, *MIXED)
    torchrun("train", TINY, "--run-dir", two, *MIXED, *TWO, port=29561)
    a, b = summary(one), summary(two)
    assert {s["distributed"] for s in b["stages"].values()} == {"fsdp x2"}
    assert_same_losses(a, b, 1e-4)
    # the training-time samples decoded the weights trained so far: the same scores as one process's
    scores = [[(r["stage"], r["step"], r["poetic_score"]) for r in map(json.loads, (run / "metrics.jsonl").open())
               if "poetic_score" in r] for run in (one, two)]
    assert scores[0] and scores[0] == scores[1]
    assert a["samples"] == b["samples"]
    # the merged models, written once by the main process as plain safetensors, are the one process's
    for stage in ("dapt", "sft"):
        assert_same_weights(one / stage / "model" / "model.safetensors", two / stage / "model" / "model.safetensors",
                            1e-4)
    assert_same_weights(one / "dapt" / "adapter" / "adapter_model.safetensors",
                        two / "dapt" / "adapter" / "adapter_model.safetensors", 1e-6)
    # and training moved them: the comparison above is not between two untrained copies
    base, tuned = load_file(str(two / "dapt" / "model" / "model.safetensors")), \
        load_file(str(two / "sft" / "model" / "model.safetensors"))
    assert max((base[k] - tuned[k]).abs().max().item() for k in base) > 1e-3


def test_fsdp_resume_after_sigkill_matches_uninterrupted(tmp_path):
    sets = ["--set", "stages.dapt.train.max_steps=6", "--set", "stages.dapt.train.save_every=1",
            "--set", "stages.dapt.adapter.dropout=0.1",  # dropout draws random numbers: each rank's RNG restored
            "--set", "stages.dapt.train.eval_every=2",  # an evaluation just before a save (it leaves weights gathered)
            # stage 2 trains every weight, with saves right after evaluations (its optimizer holds the root's shards)
            "--set", "stages.sft.adapter.method=full", "--set", "stages.sft.train.save_every=2",
            "--set", "stages.sft.train.eval_every=2",
            "--set", "eval.prompts=[]", *TWO]
    full, broken = tmp_path / "full", tmp_path / "broken"
    torchrun("train", TINY, "--run-dir", full, *sets, port=29562)
    p = torchrun("train", TINY, "--run-dir", broken, *sets, port=29563, env={"QUILL_FAULT": "step:dapt:4"},
                 check=False)
    assert p.returncode != 0
    assert not (broken / "summary.json").exists() or "sft" not in summary(broken).get("stages", {})
    state = json.loads((broken / "checkpoints" / "dapt" / "state.json").read_text())
    assert state["step"] == 4 and state["sharded"] and state["world_size"] == 2
    # the checkpoint holds whole tensors (gathered), not one process's shards
    saved = load_file(str(broken / "checkpoints" / "dapt" / "trainable.safetensors"))
    whole = load_file(str(full / "dapt" / "adapter" / "adapter_model.safetensors"))  # peft's names for them
    assert {k.removeprefix("model.").replace(".default", ""): tuple(t.shape) for k, t in saved.items()} == \
        {k: tuple(t.shape) for k, t in whole.items()}
    p = torchrun("resume", broken, port=29564)
    assert "resumed at step 4/6" in p.stdout + p.stderr
    assert_same_losses(summary(full), summary(broken), 1e-6)


def test_a_checkpoint_resumes_only_under_the_strategy_that_wrote_it(tmp_path):
    run = tmp_path / "run"
    sets = ["--set", "stages.dapt.train.max_steps=4", "--set", "stages.dapt.train.save_every=1",
            "--set", "eval.prompts=[]", *TWO]
    torchrun("train", TINY, "--run-dir", run, *sets, port=29565, env={"QUILL_FAULT": "step:dapt:2"}, check=False)
    p = quill("resume", run, check=False)  # its config says fsdp: one process is refused first
    assert p.returncode != 0 and "this is one" in p.stderr
    config = run / "config.yaml"  # a user switching the run to ddp: the optimizer state is keyed differently
    config.write_text(config.read_text().replace("strategy: fsdp", "strategy: ddp"))
    p = torchrun("resume", run, port=29566, check=False)
    assert p.returncode != 0 and "resume it with the same distributed.strategy" in p.stderr + p.stdout


@pytest.mark.parametrize("sets, key", [
    (["stages.dapt.adapter.quantize=nf4"], "stages[0].adapter.quantize"),
    (["stages.sft.train.compile=on"], "stages[1].train.compile"),
    (["stages.sft.train.precision=fp16"], "stages[1].train.precision"),
])
def test_what_sharding_does_not_do_is_a_config_error_naming_the_key(sets, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(TINY, ["distributed.strategy=fsdp", *sets])
    load_config(TINY, sets)  # each is fine without sharding


def test_fsdp_on_one_process_is_an_error_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="distributed.strategy fsdp .* this is one"):
        train(load_config(TINY, ["distributed.strategy=fsdp"]), tmp_path / "run", base_dir=TINY.parent)
    assert not (tmp_path / "run").exists()


def test_auto_takes_fsdp_from_the_launchers_accelerate_config(monkeypatch):
    from quill.train.sharding import launched_strategy
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert launched_strategy("auto") == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert launched_strategy("auto") == "fsdp" and launched_strategy("ddp") == "ddp"


def launch_env(config: str) -> tuple[object, dict]:
    """What ``accelerate launch --config_file configs/accelerate/CONFIG.yaml`` would set up: (args, env)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env
    root = Path(__file__).parent.parent
    args = launch_command_parser().parse_args(["--config_file", str(root / "configs" / "accelerate" / config),
                                               "-m", "quill.cli", "train", "x.yaml"])
    args, _, _ = _validate_launch_command(args)
    return args, (prepare_multi_gpu_env(args) if args.multi_gpu or args.use_fsdp else {})


def test_the_shipped_accelerate_configs_launch_what_they_say(tmp_path):
    shapes = {name: (a.num_machines, a.num_processes, a.use_fsdp, a.multi_gpu) for name in
              ("single_gpu.yaml", "ddp.yaml", "fsdp.yaml", "multi_node.yaml") for a in [launch_env(name)[0]]}
    assert shapes == {"single_gpu.yaml": (1, 1, False, False), "ddp.yaml": (1, 8, False, True),
                      "fsdp.yaml": (1, 8, True, False), "multi_node.yaml": (2, 16, True, False)}
    _, env = launch_env("fsdp.yaml")
    assert env["FSDP_VERSION"] == "2" and env["ACCELERATE_MIXED_PRECISION"] == "no"
    # the launcher's environment on two CPU processes: strategy auto becomes fsdp
    run = tmp_path / "run"
    torchrun("train", TINY, "--run-dir", run, *MIXED[:4], "--set", "eval.prompts=[]", port=29567,
             env={k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))})
    assert {s["distributed"] for s in summary(run)["stages"].values()} == {"fsdp x2"}


def two_nodes(args_a: list, args_b: list, port: int, env=None) -> tuple[int, int, str]:
    """One process on each of two "nodes" (torchrun --nnodes 2 on loopback): (exit codes, output)."""
    procs = [torchrun(*args, port=port, env=env, nodes=(2, rank)) for rank, args in enumerate((args_a, args_b))]
    out = [p.communicate(timeout=300)[0] for p in procs]
    return procs[0].returncode, procs[1].returncode, "\n".join(out)


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_nodes_with_separate_disks_train_checkpoint_and_resume(tmp_path, strategy):
    """Each node's run folder on a disk of its own (two directories): the main process writes the record and
    the checkpoints; node 1's first process prepares its own data and keeps its copy of the stage models."""
    sets = ["--set", "stages.sft.train.max_steps=4", "--set", "stages.sft.train.save_every=1",
            "--set", "stages.dapt.train.max_steps=2", "--set", "stages.dapt.adapter.dropout=0.1",
            "--set", "eval.prompts=[]", *TWO[:4], "--set", f"distributed.strategy={strategy}"]
    full, a, b = tmp_path / "full", tmp_path / "disk-a" / "run", tmp_path / "disk-b" / "run"
    port = 29568 if strategy == "fsdp" else 29580  # the two cases may run at once (pytest -n 2)
    torchrun("train", TINY, "--run-dir", full, *sets, port=port)
    # killed in stage 2: the resume restores stage 1 from each disk's own copy and stage 2 from rank 0's checkpoint
    ra, rb, out = two_nodes(["train", TINY, "--run-dir", a, *sets], ["train", TINY, "--run-dir", b, *sets],
                            port=port + 1, env={"QUILL_FAULT": "step:sft:2"})
    assert ra != 0 and rb != 0
    assert (a / "checkpoints" / "sft" / "state.json").exists() and not (b / "checkpoints").exists()
    assert (b / "config.yaml").exists() and (b / "data" / "sft" / "train.jsonl").exists()
    assert (b / "dapt" / "model" / "model.safetensors").exists() and not (b / "metrics.jsonl").exists()
    ra, rb, out = two_nodes(["resume", a], ["resume", b], port=port + 2)
    assert ra == rb == 0, out[-3000:]
    assert "resumed at step 2/4" in out
    assert_same_losses(summary(full), summary(a), 1e-6)
    assert_same_weights(full / "sft" / "model" / "model.safetensors", b / "sft" / "model" / "model.safetensors", 0)


def test_two_nodes_sharing_a_disk_write_one_run_folder(tmp_path):
    run, one = tmp_path / "run", tmp_path / "one"
    quill("train", TINY, "--run-dir", one, *MIXED)
    ra, rb, out = two_nodes(*[["train", TINY, "--run-dir", run, *MIXED, *TWO]] * 2, port=29571)
    assert ra == rb == 0, out[-3000:]
    assert out.count("[dapt] data:") == 1  # prepared once, by the main process: node 1 saw its copy
    assert_same_losses(summary(one), summary(run), 1e-4)
