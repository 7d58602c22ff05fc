"""MaskDropout: dropout with the fast mask, same expectation and gradients as its mask says; the swap."""

from __future__ import annotations

import torch
from torch import nn

from peftkit.train.dropout import MaskDropout, fast_dropout_in_place, keep_scale


def test_mask_dropout_drops_scales_and_backpropagates_through_its_mask():
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


def test_seeded_runs_draw_the_same_masks():
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
