"""The pre-flight guard of `peftkit train`: plan the recipe, stop before loading if it cannot fit here.

    spec = spec_from_recipe(recipe, device="cpu")      # the recipe as a TrainPlanSpec
    check_fits(recipe, console)                          # raises WontFitError, printing plan and advice

"Here" is the device training would use: the first CUDA GPU's free memory, or on a CPU-only
machine the RAM the OS reports as available (psutil), which already excludes what this process
holds. `peftkit train --force` skips the guard.
"""

from __future__ import annotations

from rich.console import Console

from peftkit.errors import PeftkitError
from peftkit.plan.hardware import Device, current_device
from peftkit.plan.memory import METHODS, TrainPlanSpec
from peftkit.recipe import Recipe
from peftkit.resources import human_bytes


class WontFitError(PeftkitError):
    """The planned training run needs more memory than the device has (use --force to try anyway)."""


def spec_from_recipe(recipe: Recipe, device: str) -> TrainPlanSpec:
    """The TrainPlanSpec a recipe's training run corresponds to (the sequence is data.max_length)."""
    from peftkit.catalog.datasets import BUILTIN_DATASETS

    method = recipe.method
    kind = getattr(method, "kind", "lora")
    data_task = recipe.data.task or (BUILTIN_DATASETS[recipe.data.dataset].task
                                     if recipe.data.dataset in BUILTIN_DATASETS else None)
    task = None if data_task is None else ("sequence-classification" if data_task == "classification" else "causal-lm")
    num_labels = 5 if recipe.data.dataset == "bbc-news" else 2  # a head's size hardly matters to memory
    return TrainPlanSpec(
        model=recipe.model.name,
        task=task,
        num_labels=num_labels,
        method=kind if kind in METHODS else "lora",
        rank=getattr(method, "r", 16),
        targets=getattr(method, "target_modules", "all-linear"),
        lora_dropout=getattr(method, "dropout", 0.0),
        dtype=recipe.model.dtype,
        batch=recipe.train.batch_size,
        seq=recipe.data.max_length,
        gradient_checkpointing=bool(getattr(recipe.train, "gradient_checkpointing", False)),
        device=device,
    )


def check_fits(recipe: Recipe, console: Console, device: Device | None = None) -> dict:
    """Plan `recipe` for `device` (default: this machine's); raise WontFitError when it does not fit.

    Returns the verdict when it fits. When it does not, the plan and the advice are printed to
    `console` and the error names the shortfall and the first change that fits.
    """
    from peftkit.plan.advise import advise, verdict
    from peftkit.plan.memory import plan_training
    from peftkit.plan.report import build_report, print_report

    device = device or current_device()
    spec = spec_from_recipe(recipe, device.kind)
    plan = plan_training(spec)
    result = verdict(plan, device)
    if result["fits"]:
        console.print(f"plan: peak {human_bytes(plan.peak_bytes)} of {human_bytes(device.memory_bytes)} "
                      f"on {device.name} (headroom {human_bytes(result['headroom_bytes'])})")
        return result
    print_report(build_report([spec], [device]), console)
    fixes = advise(spec, device.memory_bytes)
    first = next((c for c in fixes["single_changes"] if c["fits"]), None)
    hint = f"; first change that fits: {first['change']} ({human_bytes(first['peak_bytes'])})" if first else ""
    raise WontFitError(
        f"{recipe.name}: planned peak {human_bytes(plan.peak_bytes)} does not fit {device.name} "
        f"({human_bytes(device.memory_bytes)}){hint}; nothing was loaded. Use --force to train anyway")
