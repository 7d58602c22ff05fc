"""Full fine-tuning: the baseline every PEFT method is compared against.

    model = wrap(base, FullSpec(), task)      # every parameter trainable, no peft wrapper
    save(model, tokenizer, RUN / "model")     # the whole model as safetensors + tokenizer

Precision: the weights stay in the recipe's model.dtype (fp32 by default) as master weights and
the Trainer's bf16 autocast does the matmuls on the bf16 path. Storing them in bf16 and updating
them there would round away most small updates (bf16 keeps 8 bits of mantissa), so the speed
plan's bf16 storage of a frozen base is not applied to full fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from peftkit.recipe import FullSpec


def wrap(model: nn.Module, spec: FullSpec, task: str) -> nn.Module:
    """Make every parameter of `model` trainable (in place) and return it."""
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def save(model: nn.Module, tokenizer, out_dir: Path) -> int:
    """Save the whole model (safetensors) and tokenizer to `out_dir`; returns the weights' bytes on disk."""
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return sum(f.stat().st_size for f in Path(out_dir).glob("*.safetensors"))
