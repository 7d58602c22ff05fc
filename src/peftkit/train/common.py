"""What the SFT and classification trainers share: Trainer arguments from a TrainSpec, the optimizer's name."""

from __future__ import annotations

from pathlib import Path

from peftkit.recipe import TrainSpec
from peftkit.train.callbacks import early_stopping_args
from peftkit.train.checkpoint import checkpoint_args


# train.optimizer → transformers' `optim` names (bitsandbytes provides the 8-bit and paged ones).
OPTIMIZERS = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit", "paged_adamw": "paged_adamw_32bit",
              "paged_adamw_8bit": "paged_adamw_8bit"}


def optimizer_note(optimizer: str, device: str) -> str | None:
    """The one line the run log gets when a paged optimizer runs where paging does not exist (CPU)."""
    if optimizer.startswith("paged") and device == "cpu":
        return (f"optimizer: {optimizer} on CPU runs non-paged (bitsandbytes pages optimizer states between GPU and "
                f"host memory; on CPU the states are ordinary memory already)")
    return None


def trainer_kwargs(spec: TrainSpec, run_dir: Path, has_val: bool) -> dict:
    """Keyword arguments valid for both transformers.TrainingArguments and trl.SFTConfig.

    `spec` is resolved: its `auto` learning rate and epochs made concrete by peftkit.train.schedule.
    """
    if spec.lr == "auto" or spec.epochs == "auto":
        raise ValueError("trainer_kwargs: train.lr / train.epochs are still 'auto'; resolve them first "
                         "(peftkit.train.schedule.resolve_schedule)")
    # With eval_every=0 the caller evaluates once after training (trainer.evaluate()).
    eval_strategy = "steps" if has_val and spec.eval_every else "no"
    return {
        "output_dir": str(run_dir / "checkpoints"),
        "num_train_epochs": spec.epochs,
        "max_steps": spec.max_steps,
        "per_device_train_batch_size": spec.batch_size,
        "per_device_eval_batch_size": spec.batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "learning_rate": spec.lr,
        "lr_scheduler_type": spec.scheduler,
        "warmup_steps": spec.warmup_ratio,  # a float below 1 is a share of the total steps
        "weight_decay": spec.weight_decay,
        "optim": OPTIMIZERS[spec.optimizer],
        "logging_steps": spec.log_every,
        "eval_strategy": eval_strategy,
        "eval_steps": spec.eval_every or None,
        "save_strategy": "no",  # the adapter is saved once, to RUN/adapter; checkpoints (below) are for resuming
        "report_to": "none",  # MLflow tracking is done by peftkit.tracking with the run's own facts
        "seed": spec.seed,
        "data_seed": spec.seed,
        "disable_tqdm": True,  # RichProgressCallback shows loss, rate and ETA instead
        "train_sampling_strategy": "group_by_length",  # similar-length batches in random order (train.sampling)
        "dataloader_num_workers": 0,
        # Mixed precision is off: weights train in the dtype they were loaded in (model.dtype).
        # trl's configs default bf16 to True, which fails on CPU-only machines.
        "bf16": False,
        "fp16": False,
        # trl turns activation checkpointing on by default; it costs ~1/3 more compute and is only
        # worth it when memory is short, which the recipe says explicitly.
        "activation_checkpointing": False,
        "include_num_input_tokens_seen": "non_padding",
        **checkpoint_args(spec),  # resumable checkpoints every train.checkpoint_every steps (train.checkpoint)
        **early_stopping_args(spec, has_val),  # checkpoints + best-model reload, only when early stopping is on
    }
