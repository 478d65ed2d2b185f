"""Decoding's linear layers: the flipped product equals F.linear, is chosen per shape by timing, and only inside
``oriented_linears`` (and never where gradients flow)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from quill.decoding import matmul


def test_both_products_give_the_same_numbers_for_every_input_shape():
    torch.manual_seed(0)
    w, b = torch.randn(48, 16), torch.randn(48)
    for shape in [(1, 16), (5, 16), (2, 3, 16)]:
        x = torch.randn(*shape)
        for bias in (None, b):
            flipped = matmul._flipped(x, w, bias)
            assert flipped.shape == F.linear(x, w, bias).shape and flipped.is_contiguous()
            torch.testing.assert_close(flipped, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)


def test_the_choice_is_timed_once_per_shape_bucket_and_kept(monkeypatch):
    calls = []
    monkeypatch.setattr(matmul, "_choice", {})
    monkeypatch.setattr(matmul, "_fastest", lambda x, w, b: calls.append(x.shape[0]) or True)
    used = []
    real = matmul._flipped
    monkeypatch.setattr(matmul, "_flipped", lambda *a: used.append(1) or real(*a))
    w = torch.randn(8, 4)
    with torch.inference_mode():
        for rows in (3, 4, 3, 5):                   # buckets 4, 4, 4, 8
            matmul.linear(torch.randn(rows, 4), w)
        matmul.linear(torch.randn(matmul.MAX_ROWS + 1, 4), w)    # a prefill: F.linear, never timed
    assert calls == [3, 5] and len(used) == 4
    x = torch.randn(3, 4, requires_grad=True)      # training: autograd's F.linear, whatever was measured
    matmul.linear(x, w.requires_grad_()).sum().backward()
    assert len(used) == 4 and x.grad is not None


def test_oriented_linears_patches_only_plain_linear_layers_and_restores_them(monkeypatch):
    class Lora(torch.nn.Linear):
        pass
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), Lora(8, 2))
    monkeypatch.setattr(matmul, "_choice", {})
    monkeypatch.setattr(matmul, "_fastest", lambda x, w, b: True)
    x = torch.randn(3, 4)
    with torch.inference_mode():
        want = model(x)
        with matmul.oriented_linears(model) as n:
            assert n == 1 and "forward" in model[0].__dict__ and "forward" not in model[2].__dict__
            torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    assert all("forward" not in m.__dict__ for m in model)
