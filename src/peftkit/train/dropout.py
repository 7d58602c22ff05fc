"""Dropout masks at the machine's speed: a keep mask 3-5x cheaper to draw than PyTorch's on CPU.

    keep = keep_mask(x, p=0.1, seed=7)         # bool, P(False) = drop_rate(p), the same for the same seed
    n = fast_dropout_in_place(model)            # the model's own nn.Dropout layers draw their masks this way

PyTorch's CPU dropout (`bernoulli_`) draws one Mersenne-Twister number per element and converts it:
7-9 ns an element on an AVX2 CPU whatever the dtype, which for a LoRA step on a small model is
more than a sixth of the step (stop 12: 0.50 s of a 3.1 s fp32 smollm2-135m step, torch.profiler).
Here the mask is drawn as 16-bit random integers, four from each 64-bit word of the generator, and
an element is dropped when its integer falls below a threshold: the drop rate is p rounded to a
multiple of 1/65536 (0.05 -> 0.0500031) and kept elements are scaled by 1 / (1 - that rate), so the
expectation is unchanged. `benchmarks/dropout_mask_bench.py` measures both draws in one process.

Used by the fused LoRA dropout (`train.adapter_memory`, which redraws the mask in backward from the
seed) and by `MaskDropout`, which replaces the model's own `nn.Dropout` layers while training
(BERT-style encoders have four per layer) and, like PyTorch's, keeps the bool mask for backward.
"""

from __future__ import annotations

import torch
from torch import nn

_MASK_LEVELS = 1 << 16


def drop_rate(p: float) -> float:
    """The drop probability the mask realises for `p` (p rounded to a multiple of 1/65536)."""
    return round(p * _MASK_LEVELS) / _MASK_LEVELS


def keep_scale(p: float) -> float:
    """1 / (1 - drop_rate(p)): what kept elements are multiplied by, so the expectation is unchanged."""
    return 1.0 / (1.0 - drop_rate(p))


def keep_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Bool keep mask of x's shape, P(False) = drop_rate(p), reproducible from `seed` on x's device."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None, generator=generator)
    threshold = -(_MASK_LEVELS // 2) + round(p * _MASK_LEVELS)  # uniform int16 values below it: dropped
    return words.view(torch.int16)[:n].view(x.shape) >= threshold


def draw_seed() -> int:
    """A seed for one mask, from the global RNG (seeded runs repeat)."""
    return int(torch.randint(0, 2**62, (1,)).item())


class _MaskDropoutFn(torch.autograd.Function):
    """dropout(x) with the fast mask; saves the bool mask (1 byte an element, as PyTorch's dropout does)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x, p, draw_seed())
        ctx.save_for_backward(keep)
        ctx.scale = keep_scale(p)
        return x * keep * ctx.scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None


class MaskDropout(nn.Dropout):
    """nn.Dropout drawing its mask with `keep_mask`; the same `p` attribute (attention code reads it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0.0
        return _MaskDropoutFn.apply(x, self.p)


def fast_dropout_in_place(model: nn.Module) -> int:
    """Replace every plain nn.Dropout of `model` (p > 0) by a MaskDropout of the same p; returns how many.

    Only the mask generator changes. Dropout inside attention kernels (SDPA's dropout_p) is not a
    module and is left to the kernel; LoRA's own dropout is then fused into lora_A
    (train.adapter_memory), which accepts a MaskDropout like an nn.Dropout.
    """
    targets = [(name, module) for name, module in model.named_modules() if type(module) is nn.Dropout and module.p > 0]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, MaskDropout(module.p, module.inplace))  # nn.ModuleDict entries too
    return len(targets)
