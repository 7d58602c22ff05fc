"""Smaller activations for LoRA layers: what backward keeps of each adapted linear layer.

    with adapter_inputs_uncast(model, active=plan.bf16):   # bf16 path: no fp32 copies of inputs
        fuse_lora_dropout_in_place(model)                  # dropout mask regenerated in backward
        trainer.train()

peft's LoRA layer computes `result + lora_B(lora_A(dropout(x.to(A.dtype)))) * scaling`. On the bf16
path (frozen base in bf16, adapters in fp32, autocast) two parts of that keep more than they need
(measured on smollm2-135m, r=16 all-linear, dropout 0.05, one batch of 8 x 256 tokens; bytes of
tensors saved for backward, `benchmarks/lora_activation_memory.py`):
- the cast: every targeted layer's input is copied to fp32 before dropout, and the copy is what the
  dropout and lora_A keep: 2.94 GiB saved in all, 1.16 GiB of it by dropout in fp32. Under autocast
  the cast buys nothing (lora_A's matmul runs in bf16 anyway); peft's own switch
  (`cast_input_dtype_enabled`, `peft.helpers.disable_input_dtype_casting`) turns it off: 2.38 GiB.
- the dropout: `nn.Dropout` keeps its scaled noise tensor (same size and dtype as x) and lora_A
  keeps the dropped input, two copies of x per targeted layer although x itself is already kept by
  the base layer. `DropoutLinear` fuses dropout into lora_A and keeps only x and a seed; backward
  draws the same mask again from the seed (the idea of FlashAttention's dropout): 1.55 GiB, the
  same as with no dropout at all.
Both are exact: same forward values, same gradients for the same mask.

The fused dropout cost speed with PyTorch's bernoulli_ mask: drawing each mask twice (forward and
backward) made the whole SFT step 1.31x slower on an AVX-512 CPU (benchmarks/attention_compile_probe.py, `sdpa` vs `sdpa+unfused`, stop 11);
the uncast inputs cost nothing measurable (`sdpa+unfused+cast` 1.35x vs 1.31x). It is kept for memory
(saved for backward 2.38 -> 1.54 GiB above). Since stop 12 the mask comes from `train.dropout` (four
16-bit draws per 64-bit word): on an AVX2 CPU, fp32, one torch.profiler probe each, the fused step took
3.19 s against 3.12 s for peft's unfused dropout and 2.39 s with no dropout at all.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.train.dropout import SeededMask, draw_seed, keep_scale


class _DropoutLinearFn(torch.autograd.Function):
    """y = dropout(x) @ W^T, saving x and a seed instead of the mask and the dropped input.

    The 1 / (1 - p) scale of dropout is applied to the [..., r] side (the output, and the incoming
    gradient in backward), which is r / in_features the size of x. The mask is `train.dropout`'s
    SeededMask: with the compiled kernel, applying it is one pass over x (nothing drawn, nothing
    kept); with the generator, backward draws it once more for both of its uses.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        seed = draw_seed()
        ctx.save_for_backward(x, weight)
        ctx.seed, ctx.p = seed, p
        dtype = _compute_dtype(x)
        dropped = SeededMask(p, seed).apply(x.to(dtype), 1.0)
        return F.linear(dropped, weight.to(dtype)) * keep_scale(p)  # [..., r]

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        mask = SeededMask(ctx.p, ctx.seed)  # the forward's mask
        dtype = _compute_dtype(x)
        grad_y = (grad_y * keep_scale(ctx.p)).to(dtype)  # [..., r]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = mask.apply(grad_y @ weight.to(dtype), 1.0)  # [..., in]
        if ctx.needs_input_grad[1]:
            dropped = mask.apply(x.to(dtype), 1.0)
            grad_w = (grad_y.reshape(-1, grad_y.shape[-1]).t() @ dropped.reshape(-1, dropped.shape[-1])).to(weight.dtype)
        return grad_x, grad_w, None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the matmul runs in: autocast's when it is on for x's device, else x's own."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class DropoutLinear(nn.Linear):
    """lora_A with its dropout inside: same parameters and state-dict keys as the nn.Linear it replaces."""

    def __init__(self, linear: nn.Linear, p: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: optimizer and saving see no change
        self.bias = linear.bias
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0 and self.bias is None:
            return _DropoutLinearFn.apply(x, self.weight, self.p)
        return F.linear(F.dropout(x, self.p, self.training), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


def fuse_lora_dropout_in_place(model: nn.Module) -> int:
    """Replace dropout + lora_A of every plain LoRA linear layer by one DropoutLinear; returns how many.

    Layers with a variant (DoRA) use the dropout output themselves and are left as they are.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        for name, dropout in list(module.lora_dropout.items()):
            lora_a = module.lora_A[name]
            if (not isinstance(dropout, nn.Dropout) or dropout.p == 0 or name in module.lora_variant
                    or type(lora_a) is not nn.Linear or lora_a.bias is not None):
                continue
            module.lora_A[name] = DropoutLinear(lora_a, dropout.p)
            module.lora_dropout[name] = nn.Identity()
            fused += 1
    return fused


@contextlib.contextmanager
def adapter_inputs_uncast(model: nn.Module, active: bool = True):
    """While active, adapter layers take their input as it comes (no fp32 copy): only under autocast.

    The switch is peft's (`cast_input_dtype_enabled`, what `peft.helpers.disable_input_dtype_casting`
    sets), set here only on layers that have it: peft's helper fails on tuners without it (IA3).
    """
    layers = [m for m in model.modules() if active and getattr(m, "cast_input_dtype_enabled", None) is True]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.cast_input_dtype_enabled = True
