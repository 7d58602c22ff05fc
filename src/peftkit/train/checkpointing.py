"""Activation checkpointing for the long batches only: the peak memory of a typical batch at almost full speed.

    budget = long_batch_tokens(lengths, batch_size=8)      # batch_size x the 90th-percentile example length
    switch = LongBatchCheckpointing.attach(model, budget) # None when the model cannot checkpoint its layers
    switch.set_for(batch["input_ids"])                   # before each forward: on above the budget, off below

Peak memory is set by the longest batch: with length-grouped batches of chatterbot conversations the
first (longest) batch is 8 x 256 tokens against about 8 x 57 for a typical one, so its activations are
four times a typical batch's. Checkpointing every batch bounds that but recomputes the forward pass
of every step (for LoRA, whose backward skips the frozen weights' gradients, about 1.5x the step).
Checkpointing only batches above a token budget recomputes only those: the budget is the padded size
of a batch of examples at the 90th percentile of lengths, so about one batch in ten pays, and the peak
is that of a p90 batch (or of a checkpointed long batch, whichever is larger). Measured with
`benchmarks/train_bench.py --configs c_peftkit` on an AVX2-only CPU (fp32 path, 40 steps, each run
alone, stop 12): peak RSS 3.98 -> 2.94 GiB, 5.61 -> 6.57 s/step, eval loss unchanged (2.1047); the
same change also moved fp32 runs' mmap threshold from 2 to 4 MiB, so the two are not separated.

The switch uses transformers' own checkpointing (`activation_checkpointing_enable`, non-reentrant) and
flips the documented per-layer flag (`GradientCheckpointingLayer.gradient_checkpointing`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

LONG_BATCH_QUANTILE = 0.9


def long_batch_tokens(lengths: Sequence[int], batch_size: int, quantile: float = LONG_BATCH_QUANTILE) -> int:
    """The token budget above which a batch is checkpointed: batch_size x the `quantile` example length."""
    if not lengths:
        return 0
    ranked = sorted(lengths)
    index = min(len(ranked) - 1, max(0, math.ceil(quantile * len(ranked)) - 1))
    return batch_size * ranked[index]


class LongBatchCheckpointing:
    """Turns activation checkpointing on for batches of more than `max_tokens` tokens, off for the rest."""

    def __init__(self, layers: list[nn.Module], max_tokens: int):
        self.layers = layers
        self.max_tokens = max_tokens
        self.checkpointed_batches = 0
        self.batches = 0

    @classmethod
    def attach(cls, model: nn.Module, max_tokens: int) -> LongBatchCheckpointing | None:
        """Enable transformers' checkpointing on `model` (a PreTrainedModel or a PeftModel around one), all
        layers off to start with; None when the model has no checkpointable layers."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if not getattr(base, "supports_gradient_checkpointing", False):
            return None
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
        if not layers:
            base.activation_checkpointing_disable()
            return None
        switch = cls(layers, max_tokens)
        switch._set(False)
        return switch

    def _set(self, on: bool) -> None:
        for layer in self.layers:
            layer.gradient_checkpointing = on

    def set_for(self, input_ids: torch.Tensor) -> bool:
        """Checkpoint this batch when it has more than max_tokens tokens (padding included); returns whether."""
        on = input_ids.numel() > self.max_tokens
        self._set(on)
        self.batches += 1
        self.checkpointed_batches += int(on)
        return on
