"""Dropout masks: the compiled hash kernel against its reference, its statistics; MaskDropout; the swap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit.train.dropout as dropout_module
from peftkit.train.dropout import (MaskDropout, SeededMask, compile_kernel, compile_mask_kernel, drop_rate,
                                   dropout, fast_dropout_in_place, hashed_dropout, kernel_ready, keep_scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1,), (63,), (786_432,), (1_000_003,), (2048, 384), (3, 37, 37), (2, 5, 4096 * 3)])
def test_the_compiled_kernel_equals_its_eager_reference_bit_for_bit(dtype, shape):
    """Whatever 2-D view the kernel computes over (4096 columns, the last dimension, one), the bits are
    those of the flat reference."""
    ok, line = compile_mask_kernel()
    assert ok and "compiled" in line, line
    x = torch.randn(shape).to(dtype)
    for p, seed, scale in [(0.1, 1, keep_scale(0.1)), (0.5, 2**31 - 1, 1.0), (0.05, 987654321, keep_scale(0.05))]:
        args = dropout_module._kernel_args(p, seed, scale)
        with torch.no_grad():
            out = dropout_module._kernel(x, *args)
            assert out.shape == x.shape
            assert torch.equal(out.reshape(-1), hashed_dropout(x.reshape(-1), *args))


def test_the_kernel_loop_is_split_over_threads_whatever_the_size_it_was_compiled_for():
    from torch._inductor.utils import run_and_get_code

    kernel = compile_kernel(dropout_module.hashed_dropout_rows)
    columns = torch.arange(64, dtype=torch.int32)
    with torch.no_grad():  # a small example: inductor alone would keep the loop on one thread
        _, sources = run_and_get_code(kernel, torch.ones(2, 64, dtype=torch.bfloat16), columns, torch.tensor(64, dtype=torch.int32),
                                      *dropout_module._kernel_args(0.1, 7, 1 / 0.9))
    assert any("#pragma omp parallel" in code for code in sources)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_hashed_masks_drop_at_the_rate_independently_and_repeat_from_their_seed(p):
    assert compile_mask_kernel()[0]  # the generator's statistics: tests/train/test_adapter_memory.py
    x = torch.ones(1000, 1000, dtype=torch.bfloat16)
    keep = SeededMask(p, seed=3).keep(x)
    dropped = (~keep).double()
    # 1e6 draws: the rate is within 5 standard deviations of drop_rate(p)
    assert abs(dropped.mean().item() - drop_rate(p)) < 5 * (p * (1 - p) / 1e6) ** 0.5
    flat = dropped.flatten()
    for lag in (1, 2, 16, 1000):  # neighbours, a vector's width apart, a row apart
        corr = torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()
        assert abs(corr) < 0.01, (lag, corr)
    other = (~SeededMask(p, seed=4).keep(x)).double().flatten()
    assert abs(torch.corrcoef(torch.stack([flat, other]))[0, 1].item()) < 0.01  # seeds give unrelated masks
    assert torch.equal(keep, SeededMask(p, seed=3).keep(x))
    kept = SeededMask(p, seed=3).apply(x)
    assert torch.equal(kept[keep], torch.full_like(kept[keep], keep_scale(p)))  # scaled in fp32, rounded once


def test_a_generator_mask_is_drawn_once_and_applied_alike(mask_source):
    mask = SeededMask(0.3, seed=11)
    x, g = torch.randn(40, 50), torch.randn(40, 50)
    a, b = mask.apply(x, 1.0), mask.apply(g, 1.0)
    assert torch.equal(a == 0, b == 0) and 0 < (a == 0).float().mean() < 0.6
    torch.testing.assert_close(mask.apply(x), a * keep_scale(0.3))


def test_masks_on_cuda_tensors_never_use_the_cpu_kernel(mask_source):
    assert not kernel_ready("cuda")
    assert kernel_ready("cpu") == (mask_source == "kernel")


def test_without_a_compiler_the_generator_stays_and_the_log_says_why(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(dropout_module, "_kernel", None)
    monkeypatch.setattr(torch, "compile", no_compiler)
    ok, line = compile_mask_kernel()
    assert not ok and dropout_module._kernel is None
    assert "16-bit generator" in line and "No working C++ compiler" in line
    y = dropout(torch.ones(100, 100), 0.5)  # still dropout, from the generator
    assert 0.4 < (y == 0).float().mean() < 0.6


def test_mask_dropout_drops_scales_and_backpropagates_through_its_mask(mask_source):
    torch.manual_seed(0)
    x = torch.randn(400, 300, requires_grad=True)
    layer = MaskDropout(0.2)
    y = layer(x)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - 0.2) < 0.01
    torch.testing.assert_close(y[~dropped], x[~dropped] * keep_scale(0.2))
    y.sum().backward()
    expected = torch.where(dropped, 0.0, keep_scale(0.2))
    torch.testing.assert_close(x.grad, expected)
    layer.eval()
    assert torch.equal(layer(x), x)


def test_mask_dropout_in_bf16_keeps_its_mask_through_backward(mask_source):
    torch.manual_seed(0)
    x = torch.randn(16, 128, 384, dtype=torch.bfloat16, requires_grad=True)
    y = MaskDropout(0.1)(x)
    dropped = y == 0
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad == 0, dropped)
    assert y.dtype == x.grad.dtype == torch.bfloat16


def test_seeded_runs_draw_the_same_masks(mask_source):
    x = torch.ones(50, 50)
    torch.manual_seed(5)
    a = MaskDropout(0.5)(x)
    torch.manual_seed(5)
    b = MaskDropout(0.5)(x)
    assert torch.equal(a, b) and not torch.equal(a, MaskDropout(0.5)(x))


def test_swap_replaces_only_plain_dropout_with_p_above_zero():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Dropout(0.0), nn.ModuleDict({"a": nn.Dropout(0.3)}))
    assert fast_dropout_in_place(model) == 2
    assert isinstance(model[1], MaskDropout) and model[1].p == 0.1
    assert type(model[2]) is nn.Dropout
    assert isinstance(model[3]["a"], MaskDropout) and model[3]["a"].p == 0.3
    assert fast_dropout_in_place(model) == 0  # already swapped
