"""Units of the training loop that need no model: step planning, early stopping, precision choice."""
from types import SimpleNamespace

import torch

import quill.models.precision as precision_mod
from quill.config import TrainConfig
from quill.models.precision import resolve_precision
from quill.train.loop import _Loop, plan_steps


def test_plan_steps_counts_windows_across_processes():
    cfg = TrainConfig(micro_batch=2, grad_accum=4, epochs=2)
    assert plan_steps(33, cfg, world=1) == (9, 18)   # ceil(33 / 4) per epoch: the short last window is a step
    assert plan_steps(33, cfg, world=2) == (5, 10)
    assert plan_steps(33, TrainConfig(max_steps=7), world=1)[1] == 7


def test_early_stopping_after_patience_evaluations_without_improvement():
    logged = []
    run = SimpleNamespace(log=logged.append, checkpoint=lambda name: None)
    acc = SimpleNamespace(is_main_process=True, log=lambda *a, **k: None, process_index=0, num_processes=1,
                          device=torch.device("cpu"))
    cfg = TrainConfig(early_stopping_patience=2, eval_every=1)
    inputs = SimpleNamespace(name="s", val=[], samples=None, train_cfg=cfg)
    loop = _Loop(SimpleNamespace(total_steps=100, shards=None), inputs, acc, run)
    vals = iter([2.0, 1.5, 1.6, 1.55, 1.7])
    loop.evaluate = lambda loader: next(vals)
    stops = []
    for _ in range(5):
        loop.state.step += 1
        loop.maybe_evaluate()
        stops.append(loop.stop)
    assert stops == [False, False, False, True, True]
    assert loop.state.best_val == 1.5 and loop.state.bad_evals == 3
    assert [r["val_loss"] for r in logged] == [2.0, 1.5, 1.6, 1.55, 1.7]


def test_precision_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(precision_mod, "cpu_has_bf16", lambda: True)   # auto on a CPU: bf16 only with AMX
    assert resolve_precision("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(precision_mod, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("fp16", cpu) == torch.float16
