"""LoRA through peft, with its variants as flags of one spec: rsLoRA, DoRA, PiSSA / OLoRA init.

    model = wrap(base_model, LoraSpec(r=8, dora=True), task="causal-lm")   # base_model is modified in place

- rsLoRA (`rslora: true`): the update is scaled by alpha / sqrt(r) (peft `use_rslora`), so larger
  ranks keep learning instead of being damped by 1/r.
- DoRA (`dora: true`): weight = magnitude · direction, LoRA adapts the direction (peft `use_dora`).
- `init: pissa` / `init: olora` (peft `init_lora_weights`): A, B start from an SVD / QR of each
  targeted weight and that part is taken out of the frozen weight; the saved adapter then holds
  the *change* relative to the original base in peft's standard form (see `save_kwargs`), so it
  loads on the unmodified base like any LoRA adapter.

Targets: see `peftkit.methods.targets` (presets attention, attention-all, all-linear, or names).
"""

from __future__ import annotations

from torch import nn

from peftkit.methods.targets import ATTENTION_PAIRS, linear_module_names, resolve_targets
from peftkit.recipe import LoraSpec

__all__ = ["ATTENTION_PAIRS", "lora_config", "linear_module_names", "parameter_counts", "needs_initial_snapshot", "resolve_targets",
           "wrap", "wrap_with_lora"]

INIT = {"default": True, "pissa": "pissa", "olora": "olora"}


def peft_task_type(task: str):
    from peft import TaskType

    return TaskType.CAUSAL_LM if task == "causal-lm" else TaskType.SEQ_CLS


def lora_config(model: nn.Module, spec: LoraSpec, task: str, **extra):
    """The peft LoraConfig for `spec` on `model` (targets resolved and checked)."""
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=resolve_targets(model, spec),
        use_rslora=spec.rslora,
        use_dora=spec.dora,
        init_lora_weights=INIT[spec.init],
        task_type=peft_task_type(task),
        **extra,
    )


def wrap(model: nn.Module, spec: LoraSpec, task: str):
    """Wrap `model` in a LoRA PeftModel (peft injects the layers into `model` itself, in place).

    Args:
        task: "causal-lm" or "sequence-classification" (the head then trains fully, saved with the adapter).
    """
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, spec, task))


def needs_initial_snapshot(spec) -> bool:
    """PiSSA/OLoRA change the base weights at init; their adapter is saved relative to a snapshot of that init.

    peft subtracts the initial A·B from each targeted base weight. Saved as is, the adapter would only
    be right on that modified base; saving with `path_initial_model_for_weight_conversion` (the
    snapshot taken right after wrapping) stores the difference to the untouched base instead, as a
    plain rank-2r LoRA adapter that loads on the original base like any other.
    """
    return getattr(spec, "init", "default") != "default"


wrap_with_lora = wrap  # the name used before other methods existed


def parameter_counts(model) -> dict[str, float]:
    """Trainable and total parameters of a PeftModel or of a plain model (full fine-tuning)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()  # peft's count: right for 4-bit weights too
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total, "trainable_percent": 100.0 * trainable / total}
