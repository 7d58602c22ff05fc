"""`peftkit train`: prepare data, load the base model, apply the recipe's method, train, save the result.

    result = train("recipes/quickstart.yaml", overrides=["train.lr=1e-3"])
    result.run_dir / "adapter"     # PEFT format: adapter_config.json + adapter_model.safetensors
    result.run_dir / "model"       # method.kind: full — the whole model (safetensors + tokenizer)

The method (`method.kind`: lora, qlora, prefix, prompt, ia3, loha, lokr, bottleneck, full) is applied by
`peftkit.methods.apply_method`; qlora loads the base in 4 bits first. Writes the `train` section of
metrics.json (losses, time, steps, tokens, peak memory, trainable parameters, adapter size, or
model_bytes for full) and, unless `output.mlflow` is false, an MLflow run.

Under `peftkit train --processes N` every torchrun worker runs `train()` (peftkit.train.processes): rank 0
writes, every rank trains its share of the global batch. `train(None, resume=RUN)` continues RUN from its
newest checkpoint (peftkit.train.checkpoint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from peftkit.catalog.models import BUILTIN_MODELS
from peftkit.data.prepare import prepare_data
from peftkit.errors import RecipeError, ResumeError, TrainingInterrupted
from peftkit.recipe import Recipe, load_recipe
from peftkit.resources import peak_memory
from peftkit.rundir import new_run_dir, update_metrics, write_lineage
from peftkit.train.processes import RUN_DIR_ENV, BatchSplit, World


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict


def model_task(data_task: str) -> str:
    return "sequence-classification" if data_task == "classification" else "causal-lm"


def train(recipe: Recipe | str | Path | None, overrides: list[str] | None = None, console: Console | None = None,
          force: bool = False, resume: str | Path | None = None) -> TrainResult:
    """Train the recipe's adapter into a new run directory and return it with the training metrics.

    Unless `force`, the run is planned first and stops (WontFitError) before anything is loaded
    when it will not fit this machine's device (peftkit.plan.guard).

    `resume`: a run directory to continue from its latest checkpoint (peftkit.train.checkpoint); `recipe`
    may then be None, else it must equal the run's. Under torchrun (peftkit.train.processes) every
    process calls this; rank 0 alone writes the run directory, metrics and MLflow, and the others
    return their TrainResult with empty metrics.
    """
    import torch
    from transformers.trainer_callback import PrinterCallback

    from peftkit.loading import load_base_model, load_tokenizer
    from peftkit.methods import (apply_method, base_quantization, describe_method, parameter_counts, save_tuned,
                                 snapshot_initial)
    from peftkit.train.adapter_memory import adapter_inputs_uncast, fuse_lora_dropout_in_place
    from peftkit.launch import active_allocator
    from peftkit.train.allocator import (TrimHeapCallback, keep_freed_memory_for_reuse, mmap_threshold_for,
                                         return_freed_memory_in_place)
    from peftkit.train.attention import restore_attention
    from peftkit.train.dropout import compile_mask_kernel, fast_dropout_in_place, kernel_ready
    from peftkit.train.first_token import last_layer_first_token_in_place
    from peftkit.train.gated_mlp import fuse_gated_mlps_in_place
    from peftkit.train.recompute import recompute_gelu_outputs_in_place
    from peftkit.train.callbacks import RichProgressCallback, TextLogCallback
    from peftkit.train.checkpoint import (SigtermCheckpoint, checkpoint_on_sigterm, latest_checkpoint,
                                          remove_checkpoints, resumed_recipe)
    from peftkit.train.common import optimizer_note
    from peftkit.train.processes import join_process_group, main_process_first, split_batch, threads_per_process
    from peftkit.train.schedule import resolve_schedule
    from peftkit.train.speed import plan_speed, prepare_model_in_place

    here = join_process_group()  # rank 0 of 1 unless torchrun started this process
    console = console or Console(stderr=True)
    if not here.main:
        console = Console(stderr=True, quiet=True)  # rank 0 speaks for all
    if resume is not None:
        recipe = resumed_recipe(Path(resume), recipe, overrides)
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    split = split_batch(recipe.train.batch_size, recipe.train.grad_accum, here.size)
    local = _per_process_recipe(recipe, split)
    if recipe.method.kind == "bottleneck" and isinstance(recipe.train.early_stopping.patience, int):
        # transformers' Trainer checkpoints only PreTrainedModel / PeftModel weights (keeping the best needs them)
        raise RecipeError("train.early_stopping.patience: not available with method.kind bottleneck yet (transformers' "
                          "checkpointing cannot save it); use train.max_steps, or early_stopping.general_loss_increase")
    if not force:
        from peftkit.plan.guard import check_fits

        check_fits(recipe, console)
    threads = threads_per_process(recipe.train.threads, here.size) if here.size > 1 else recipe.train.threads
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()

    from peftkit.data.prepare import summary_line

    tokenizer = load_tokenizer(recipe.model)  # lengths and the template check use the model's own tokenizer
    with main_process_first():  # rank 0 makes the run directory and prepares the data; the others read them
        run_dir, prepared = _start_run(recipe, resume, tokenizer, here)
    console.print(f"run directory: [bold]{run_dir}[/bold]")
    console.print(summary_line(prepared))
    # the recipe's `auto` lr, epochs and early stopping follow the task, method and data (train.schedule)
    schedule, schedule_notes = resolve_schedule(recipe.train, model_task(prepared.task), recipe.method.kind,
                                                prepared.counts.get("train", 0), prepared.counts.get("val", 0) > 0,
                                                here.size)
    recipe = recipe.model_copy(update={"train": schedule})
    local = _per_process_recipe(recipe, split)
    _log(console, run_dir, *schedule_notes)
    checkpoint = latest_checkpoint(run_dir, here.size) if resume is not None else None
    if here.size > 1:
        _log(console, run_dir, f"processes: {here.size} ({'NCCL' if torch.cuda.is_available() else 'gloo'}, "
                               f"{threads} threads each)", split.describe())
    if resume is not None:
        _log(console, run_dir, f"resume: from {checkpoint.name}" if checkpoint is not None else
             "resume: no checkpoint was saved yet; training starts again from step 0")
    task = model_task(prepared.task)
    builtin = BUILTIN_MODELS.get(recipe.model.name)
    if builtin is not None and builtin.task != task:
        raise RecipeError(f"model.name: '{builtin.name}' is a {builtin.task} model; a {prepared.task} task needs a {task} model")

    t_load = time.perf_counter()
    method = recipe.method
    # Speed plan (precision, packing, attention, compile, checkpointing): resolved before loading so
    # the frozen base is stored in bf16 from the start on the bf16 path, then again with the model's sizes.
    plan = plan_speed(local.train, task, None, recipe.data.max_length, method=method.kind)
    base = load_base_model(plan.load_spec(recipe.model, method.kind), prepared.task, prepared.labels, recipe.train.seed,
                           quantization=base_quantization(method, task, plan.precision))
    plan = plan_speed(local.train, task, base.config, recipe.data.max_length, method=method.kind)
    load_seconds = time.perf_counter() - t_load
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())  # before adapter layers are added
    model = apply_method(base, method, task, gradient_checkpointing=plan.gradient_checkpointing)
    if here.main:
        snapshot_initial(model, method, run_dir)  # PiSSA/OLoRA: the init the saved adapter is expressed against
    prepare_model_in_place(model, plan)
    fast_dropouts = fast_dropout_in_place(model)  # the model's own and LoRA's: a 4x cheaper mask (train.dropout)
    fused = fuse_lora_dropout_in_place(model)  # exact; backward keeps x and a seed, not mask + dropped x
    gated = fuse_gated_mlps_in_place(model)  # exact; SwiGLU MLPs keep gate and up, not silu(gate) too
    first_token = last_layer_first_token_in_place(model)  # exact; BERT-style heads read token 0 only
    # exact; backward computes gelu outputs again from the inputs it keeps (Python hooks: not under compile)
    gelus = 0 if plan.compile else recompute_gelu_outputs_in_place(model)
    notes = [plan.summary(), optimizer_note(recipe.train.optimizer, plan.device)]
    if plan.device == "cpu" and _has_dropout(model):
        notes.append(compile_mask_kernel()[1])  # once per process, before the clock of the first step starts
    threshold = mmap_threshold_for(plan.precision)
    # Causal-LM batches vary in length, and glibc's heap then fragments; classification batches of one
    # length reuse what the last step freed, where giving it back (glibc's fixed threshold and trimming,
    # jemalloc's decay) only costs page faults (train.allocator).
    trim_heap = plan.device == "cpu" and task == "causal-lm" and return_freed_memory_in_place(threshold)
    keep_freed = plan.device == "cpu" and task != "causal-lm" and active_allocator() == "jemalloc"
    if plan.device == "cpu" and active_allocator() == "jemalloc" and not keep_freed:  # keep_freed: said below
        notes.append("memory: jemalloc allocator, freed tensors go back to the OS (peftkit.launch)")
    elif trim_heap:
        notes.append(f"memory: freed tensors go back to the OS (glibc mmap threshold fixed at {threshold >> 20} MiB, "
                     "heap trimmed after each step; jemalloc holds less: apt-get install libjemalloc2)")
    if fast_dropouts:
        how = "from the compiled kernel" if kernel_ready(plan.device) else "16 bits at a time"
        notes.append(f"speed: {fast_dropouts} dropout layers draw their masks {how} (train.dropout)")
    if fused:
        notes.append(f"activations: dropout fused into lora_A in {fused} layers (mask made again in backward)")
    if first_token:
        notes.append("speed: the last encoder layer computes only the first token while training, the one the "
                     "classification head reads (train.first_token)")
    if gelus:
        notes.append(f"activations: {gelus} gelu outputs computed again in backward from their inputs, not kept "
                     "(train.recompute)")
    if gated:
        notes.append(f"activations: {gated} gated MLPs keep gate and up for backward, not silu(gate) as well")
    if plan.bf16:
        notes.append("activations: adapter inputs stay bf16 under autocast (no fp32 copies)")
    _log(console, run_dir, *notes)
    counts = parameter_counts(model)
    console.print(
        f"model: {recipe.model.name} ({counts['total_params'] / 1e6:.1f}M params, loaded in {load_seconds:.1f}s), "
        f"{describe_method(method)}: {counts['trainable_params']:,} trainable ({counts['trainable_percent']:.2f}%)"
    )

    callbacks = [RichProgressCallback(console), TextLogCallback(run_dir / "train.log")] if here.main else []
    callbacks += [TrimHeapCallback()] if trim_heap else []
    callbacks += _early_stopping_callbacks(recipe, prepared, tokenizer)
    sigterm = SigtermCheckpoint()
    callbacks += [sigterm] if method.kind != "bottleneck" else []
    with main_process_first():  # rank 0 writes the token caches, the others read them
        if task == "causal-lm":
            from peftkit.train.sft import build_sft_trainer

            trainer = build_sft_trainer(model, tokenizer, local, prepared, run_dir, callbacks, plan, console)
        else:
            from peftkit.train.classify import build_classify_trainer

            trainer = build_classify_trainer(model, tokenizer, local, prepared, run_dir, callbacks, plan)
            _log(console, run_dir, *trainer.notes)
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the progress bar shows them
    # our own rotation, after each new checkpoint is committed; early stopping's keeps the best one too (the Trainer's)
    trainer.keep_checkpoints = recipe.train.keep_checkpoints if not isinstance(recipe.train.early_stopping.patience, int) else None
    if keep_freed and keep_freed_memory_for_reuse():  # after loading and tokenising: their freed pages purged first
        _log(console, run_dir, "memory: jemalloc allocator, freed tensors kept for the next same-size batch "
                               "(train.allocator)")
    # every forward in here runs under bf16 autocast; SIGTERM saves a checkpoint and stops after the step in progress
    with adapter_inputs_uncast(model, active=plan.bf16), checkpoint_on_sigterm(sigterm):
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
        if sigterm.stopped_at is not None:
            raise TrainingInterrupted(f"stopped by SIGTERM at step {sigterm.stopped_at} of {trainer.state.max_steps}; "
                                      f"checkpoint saved in {run_dir / 'checkpoints'}; continue with "
                                      f"`peftkit train --resume {run_dir}`")
        final_eval = trainer.evaluate() if trainer.eval_dataset is not None else {}
    restore_attention(model)  # `math` is for training forwards; the saved config says sdpa
    if not here.main:
        return TrainResult(run_dir, {})

    early_stopping = _finish_early_stopping(recipe, trainer, callbacks, run_dir)

    out_dir, out_bytes = save_tuned(model, method, run_dir, tokenizer)  # RUN/adapter, or RUN/model for full
    remove_checkpoints(run_dir)  # they existed to resume this run, which is complete now
    history = trainer.state.log_history
    steps = trainer.state.global_step
    steps_here = steps - (int(checkpoint.name.split("-")[1]) if checkpoint is not None else 0)  # this process's share
    metrics = {
        "train_loss": output.training_loss,
        "val_loss": final_eval.get("eval_loss"),
        "steps": steps,
        "epochs": trainer.state.epoch,
        "train_seconds": output.metrics["train_runtime"],
        "seconds_per_step": output.metrics["train_runtime"] / max(steps_here, 1),
        "processes": here.size,
        "micro_batch": split.micro_batch,
        "grad_accum": split.grad_accum,
        **({"resumed_from_step": steps - steps_here} if resume is not None else {}),
        "train_tokens": trainer.state.num_input_tokens_seen,
        "tokens_per_second": trainer.state.num_input_tokens_seen / max(output.metrics["train_runtime"], 1e-9),
        "load_seconds": load_seconds,
        "wall_seconds": time.perf_counter() - started,
        **counts,
        "method": method.kind,
        "artifact": out_dir.name,
        # What has to be kept per task: the adapter, or for full fine-tuning the whole model (also as
        # model_bytes), so that methods compare on one number.
        "adapter_bytes": out_bytes,
        **({"model_bytes": out_bytes} if method.kind == "full" else {}),
        "base_model_bytes": base_bytes,
        **peak_memory(),
        "speed": plan.as_dict(),
        "allocator": active_allocator(),
        **_long_batch_counts(trainer),
        "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h],
        "val_history": [{"step": h["step"], "val_loss": h["eval_loss"]} for h in history if "eval_loss" in h],
    }
    if early_stopping:
        metrics["early_stopping"] = early_stopping
    update_metrics(run_dir, train=metrics)
    write_lineage(run_dir, recipe)  # portable base name in adapter_config.json, then lineage.json
    if recipe.output.mlflow:
        from peftkit.tracking import log_training

        log_training(recipe, run_dir, metrics)
    console.print(
        f"trained {steps} steps in {metrics['train_seconds']:.0f}s "
        f"({metrics['seconds_per_step']:.2f} s/step), val loss {metrics['val_loss'] if metrics['val_loss'] is not None else '–'}"
    )
    return TrainResult(run_dir, metrics)


def _per_process_recipe(recipe: Recipe, split: BatchSplit) -> Recipe:
    """The recipe each process trains with: its share of the global batch (peftkit.train.processes.split_batch),
    and no checkpoints for bottleneck adapters (transformers' checkpointing cannot save them)."""
    update = {"batch_size": split.micro_batch, "grad_accum": split.grad_accum}
    if recipe.method.kind == "bottleneck":
        update["checkpoint_every"] = 0
    return recipe.model_copy(update={"train": recipe.train.model_copy(update=update)})


def _start_run(recipe: Recipe, resume: str | Path | None, tokenizer, here: World):
    """(run directory, prepared data): a new run's, or the resumed run's as it was prepared.

    Rank 0 creates the directory and prepares the data; the other ranks (run after it, main_process_first)
    read what it wrote. Several processes use the directory the launcher named in PEFTKIT_RUN_DIR.
    """
    import os

    from peftkit.catalog.models import resolve_model
    from peftkit.data.prepare import load_prepared
    from peftkit.train.checkpoint import discard_incomplete

    if resume is not None:
        run_dir = Path(resume)
        if (run_dir / "adapter").exists() or (run_dir / "model").exists():
            raise ResumeError(f"{run_dir}: training has finished (its adapter or model is saved); nothing to resume")
        if recipe.method.kind == "bottleneck":
            raise ResumeError(f"{run_dir}: method.kind bottleneck runs have no checkpoints (transformers' "
                              "checkpointing cannot save them); train it again")
        if here.main:
            discard_incomplete(run_dir)  # folders a killed process left half-written
    elif here.size > 1:
        if RUN_DIR_ENV not in os.environ:
            raise RecipeError(f"{here.size} processes but no {RUN_DIR_ENV} in the environment: start them with "
                              "`peftkit train RECIPE --processes N`, which names the run directory for all of them")
        run_dir = Path(os.environ[RUN_DIR_ENV])
        if here.main:
            output = recipe.output.model_copy(update={"runs_dir": str(run_dir.parent), "run_id": run_dir.name})
            new_run_dir(recipe.model_copy(update={"output": output}))
    else:
        run_dir = new_run_dir(recipe)
    if (run_dir / "data" / "manifest.json").is_file() and (resume is not None or not here.main):
        return run_dir, load_prepared(run_dir / "data")
    return run_dir, prepare_data(recipe.data, run_dir / "data", tokenizer=tokenizer,
                                 model_source=resolve_model(recipe.model.name))


def _log(console: Console, run_dir: Path, *lines: str | None) -> None:
    """Print each line and append it to RUN/train.log (None: skipped); rank 0 only under torchrun."""
    from peftkit.train.processes import world

    if not world().main:
        return
    with (run_dir / "train.log").open("a", encoding="utf-8") as fh:
        for line in filter(None, lines):
            console.print(line)
            fh.write(line + "\n")


def _has_dropout(model) -> bool:
    """Whether any dropout of `model` is active in training: its own layers, LoRA's, or attention's."""
    from torch import nn

    from peftkit.train.adapter_memory import DropoutLinear

    config = getattr(model, "config", None)
    attention_p = getattr(config, "attention_probs_dropout_prob", 0.0) or getattr(config, "attention_dropout", 0.0)
    return bool(attention_p) or any(isinstance(m, (nn.Dropout, DropoutLinear)) and m.p > 0 for m in model.modules())


def _long_batch_counts(trainer) -> dict:
    budget = getattr(trainer, "long_batch_tokens", 0)
    if not budget:
        return {}
    switch = getattr(trainer, "long_batches", None)
    return {"long_batch_tokens": budget, "split_batches": trainer.split_batches,
            "checkpointed_batches": switch.checkpointed_batches if switch is not None else 0}


def _early_stopping_callbacks(recipe: Recipe, prepared, tokenizer) -> list:
    from peftkit.data.prepare import read_split
    from peftkit.train.callbacks import early_stopping_callbacks, general_texts_for_training

    rows = [r for split in ("train", "val", "test") for r in read_split(prepared.data_dir, split)]
    return early_stopping_callbacks(recipe.train, general_texts_for_training(recipe.train, prepared.task, rows), tokenizer)


def _finish_early_stopping(recipe: Recipe, trainer, callbacks: list, run_dir: Path) -> dict | None:
    """The early-stopping summary; the checkpoints are deleted (the best one is now in the model)."""
    import shutil

    from peftkit.train.callbacks import early_stopping_summary

    summary = early_stopping_summary(recipe.train, trainer, callbacks)
    if summary is not None:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return summary
