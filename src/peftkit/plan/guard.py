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


# train.optimizer → the planner's optimizer names
PLANNER_OPTIMIZERS = {"adamw": "adamw", "adamw_8bit": "adamw-8bit", "paged_adamw": "paged-adamw",
                      "paged_adamw_8bit": "paged-adamw-8bit"}


def planner_method(method) -> tuple[dict, str | None]:
    """The TrainPlanSpec fields (method, rank, targets, dropout, virtual_tokens) for a recipe's method, and a
    note when the planner does not model the kind exactly and plans a stand-in for it."""
    kind = method.kind
    targets = getattr(method, "target_modules", "all-linear")
    if kind in ("lora", "qlora"):
        planned = "dora" if (kind == "lora" and method.dora) else kind
        note = "plan: DoRA over a 4-bit base is planned as QLoRA (no magnitude vectors)" if (
            kind == "qlora" and method.dora) else None
        return {"method": planned, "rank": method.r, "targets": targets, "lora_dropout": method.dropout}, note
    if kind in ("prefix", "prompt"):
        return {"method": kind, "virtual_tokens": method.num_virtual_tokens}, None
    if kind == "full":
        return {"method": "full"}, None
    # Not modelled by the planner: plan LoRA with at least as many trainable parameters on the same layers.
    stand_in = {"ia3": 1, "loha": 2 * getattr(method, "r", 1), "lokr": getattr(method, "r", 1)}.get(kind)
    if stand_in is None:
        return {"method": "lora"}, f"plan: {kind} is not modelled by the planner; planned as LoRA r=16 on all-linear"
    if kind == "ia3" or not isinstance(targets, (str, list)) or targets == "attention-ffn":
        targets = "all-linear"
    return ({"method": "lora", "rank": stand_in, "targets": targets, "lora_dropout": 0.0},
            f"plan: {kind} is not modelled by the planner; planned as LoRA r={stand_in} on {targets if isinstance(targets, str) else ', '.join(targets)} "
            f"(at least its trainable parameters)")


def spec_from_recipe(recipe: Recipe, device: str) -> TrainPlanSpec:
    """The TrainPlanSpec a recipe's training run corresponds to (the sequence is data.max_length)."""
    from peftkit.catalog.datasets import BUILTIN_DATASETS

    data_task = recipe.data.task or (BUILTIN_DATASETS[recipe.data.dataset].task
                                     if recipe.data.dataset in BUILTIN_DATASETS else None)
    task = None if data_task is None else ("sequence-classification" if data_task == "classification" else "causal-lm")
    num_labels = 5 if recipe.data.dataset == "bbc-news" else 2  # a head's size hardly matters to memory
    fields, _ = planner_method(recipe.method)
    if fields["method"] not in METHODS:  # a planner without this method: plan LoRA rather than fail
        fields = {"method": "lora"}
    extra = {"double_quant": recipe.method.double_quant} if recipe.method.kind == "qlora" else {}
    return TrainPlanSpec(
        path="peftkit",
        model=recipe.model.name,
        task=task,
        num_labels=num_labels,
        **fields,
        **extra,
        dtype=training_dtype(recipe, task or "causal-lm", device),
        batch=recipe.train.batch_size,
        seq=recipe.data.max_length,
        gradient_checkpointing=recipe.train.gradient_checkpointing == "on",  # auto: planned without (the larger peak)
        optimizer=PLANNER_OPTIMIZERS[recipe.train.optimizer],
        device=device,
    )


def training_dtype(recipe: Recipe, task: str, device: str) -> str:
    """The dtype the frozen base is stored and computed in when `peftkit train` runs the recipe on `device`:
    bf16 where the speed plan takes the bf16 path (a float32 recipe is stored in bf16 then), else model.dtype.
    For CUDA the plan may be for a GPU that is not here: every GPU in the catalog (Ampere or later) does bf16."""
    from peftkit.train.speed import plan_speed, training_storage_dtype

    if device == "cuda":
        bf16 = recipe.train.precision != "fp32"
    else:
        bf16 = plan_speed(recipe.train, task, None, recipe.data.max_length, device=device, method=recipe.method.kind).bf16
    return training_storage_dtype(recipe.model.dtype, recipe.method.kind, bf16)


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
    note = planner_method(recipe.method)[1]
    if note:
        console.print(note)
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
