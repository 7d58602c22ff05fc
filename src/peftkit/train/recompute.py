"""GELU outputs that backward computes again from the GELU's input instead of keeping them.

    n = recompute_gelu_outputs_in_place(model)   # BERT-style feed-forward blocks; exact
    trainer.train()

In a BERT feed-forward block `output.dense(gelu(intermediate.dense(x)))` autograd keeps two
intermediate-sized tensors per token: gelu's input (for gelu's own backward) and gelu's output,
which the LoRA layer on `output.dense` keeps for its weight gradient. The second is one elementwise
pass over the first, so while the model trains a `torch.autograd.graph.saved_tensors_hooks` pair
keeps a reference to the input in its place, and backward runs gelu on it again (bit-identical:
same op, same input, same dtype). Nothing else changes: same values, same gradients
(tests/train/test_recompute.py). On minilm-l6 that is one 1,536-wide tensor per token and encoder
layer (fp32: 12 MiB a layer for a batch of 16 x 128). Measured on the classify benchmark's settings
(bbc-news, minilm-l6, fp32, 15 steps, jemalloc, AVX2 CPU; train() on train_bench's classify recipe,
three runs each way): peak RSS 1,086-1,099 -> 1,052-1,057 MiB, 1.22-1.48 -> 1.42-1.49 s/step (noise of
the shared cores), identical val loss.

The hooks are entered by the model's own forward (a pre-hook on the root module, left again by its
forward hook, which also runs when forward raises) and only while training with grad enabled.
A hooks context of gradient checkpointing or of a caller nested inside takes precedence there.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import GELUActivation


def _is_gelu(module: nn.Module) -> bool:
    """nn.GELU, or transformers' GELUActivation when it calls torch's gelu (not its Python variant)."""
    if isinstance(module, nn.GELU):
        return True
    return type(module) is GELUActivation and module.act is F.gelu


def _gelu_of(module: nn.Module):
    approximate = module.approximate if isinstance(module, nn.GELU) else "none"
    return lambda x: F.gelu(x, approximate=approximate)


def _key(t: torch.Tensor) -> tuple:
    return t.data_ptr(), t.dtype, tuple(t.shape), t.stride(), t.storage_offset()


class GeluRecompute:
    """Registry of one forward's gelu outputs and the saved-tensor hooks that swap them for their inputs."""

    def __init__(self):
        # address key -> (weak reference to the output, gelu's input, the output's version, gelu)
        self.outputs: dict[tuple, tuple[weakref.ref, torch.Tensor, int, object]] = {}
        self.context = None
        self.swapped = 0  # saved tensors replaced by a gelu input (counted while packing)
        self.recomputed = 0  # of those, how many backward computed again

    def record(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self.context is None or not args or not isinstance(output, torch.Tensor):
            return
        x = args[0]
        if isinstance(x, torch.Tensor) and x.dtype == output.dtype and x.shape == output.shape:
            self.outputs[_key(output)] = (weakref.ref(output), x, output._version, _gelu_of(module))

    def pack(self, t: torch.Tensor):
        found = self.outputs.get(_key(t))
        # a dead output's address may already hold another tensor of its shape (the next layer's gelu input)
        if found is not None and found[0]() is not None and found[2] == t._version:
            self.swapped += 1
            return (found[1], found[3])  # gelu's input, kept by gelu's own backward already
        return t

    def unpack(self, packed):
        if isinstance(packed, tuple):
            x, gelu = packed
            self.recomputed += 1
            with torch.no_grad():
                return gelu(x)
        return packed

    def enter(self, module: nn.Module, args) -> None:
        if module.training and torch.is_grad_enabled() and self.context is None:
            self.context = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
            self.context.__enter__()

    def leave(self, module: nn.Module, args, output) -> None:
        self.outputs.clear()
        if self.context is not None:
            context, self.context = self.context, None
            context.__exit__(None, None, None)


def recompute_gelu_outputs_in_place(model: nn.Module) -> int:
    """Hook every gelu module of `model` (see the module docstring); returns how many, 0 leaves it untouched."""
    gelus = [m for m in model.modules() if _is_gelu(m)]
    if not gelus or getattr(model, "_peftkit_gelu_recompute", None) is not None:
        return 0
    registry = GeluRecompute()
    for module in gelus:
        module.register_forward_hook(registry.record)
    model.register_forward_pre_hook(registry.enter)
    model.register_forward_hook(registry.leave, always_call=True)
    model._peftkit_gelu_recompute = registry
    return len(gelus)
