"""Trainer callbacks: a rich progress bar (loss, rate, ETA), a plain-text training log, and early
stopping (on validation loss with patience, keeping the best checkpoint; optionally on a rise of the
loss on held-out general text)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

from peftkit.errors import RecipeError
from peftkit.recipe import TrainSpec


class RichProgressCallback(TrainerCallback):
    """One progress bar over optimizer steps, showing the last train and validation loss."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, loss="–", val="–", rate="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            task = self.progress.tasks[0]
            rate = f"{task.speed:.2f} step/s" if task.speed else ""
            self.progress.update(self.task, completed=state.global_step, rate=rate)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")
        if "eval_loss" in logs:
            self.progress.update(self.task, val=f"{logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class TextLogCallback(TrainerCallback):
    """Appends one readable line per log event to `run_dir/train.log`."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        fields = "  ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(f"step {state.global_step}/{state.max_steps}  {fields}\n")


# ------------------------------------------------------------------------------------------- early stopping


def early_stopping_args(spec: TrainSpec, has_val: bool) -> dict:
    """Trainer arguments that keep the best checkpoint (lowest validation loss) when early stopping is on.

    transformers saves a checkpoint at every validation round (`save_steps == eval_steps`), keeps the
    best and the latest, and loads the best back at the end, so RUN/adapter is the best adapter.
    """
    es = spec.early_stopping
    if not isinstance(es.patience, int):  # None (off) or an unresolved auto (train.schedule resolves it)
        return {}
    if not spec.eval_every:
        raise RecipeError(f"train.early_stopping.patience: needs validation rounds; set train.eval_every > 0 (found {spec.eval_every})")
    if not has_val:
        raise RecipeError("train.early_stopping.patience: the validation split is empty; raise data.split.val above 0")
    return {
        "save_strategy": "steps",
        "save_steps": spec.eval_every,
        "save_total_limit": 1,  # plus the best one, which transformers always keeps
        "save_only_model": False,  # optimizer, scheduler and RNG too: `peftkit train --resume` continues from them
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
    }


def early_stopping_callbacks(spec: TrainSpec, general_texts: list[str] | None, tokenizer) -> list[TrainerCallback]:
    """transformers' EarlyStoppingCallback on validation loss, and the general-text loss watch if asked."""
    from transformers import EarlyStoppingCallback

    es = spec.early_stopping
    callbacks: list[TrainerCallback] = []
    if isinstance(es.patience, int):
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=es.patience, early_stopping_threshold=es.min_delta))
    if es.general_loss_increase is not None:
        if not spec.eval_every:
            raise RecipeError("train.early_stopping.general_loss_increase: checked at validation rounds; "
                              f"set train.eval_every > 0 (found {spec.eval_every})")
        callbacks.append(GeneralLossCallback(general_texts or [], tokenizer, es.general_loss_increase))
    return callbacks


class GeneralLossCallback(TrainerCallback):
    """Stops training when loss on held-out general text rises more than `max_increase` (relative)
    above the loss of the model before training, checked at every validation round."""

    def __init__(self, texts: list[str], tokenizer, max_increase: float, max_length: int = 256, batch_size: int = 4):
        if not texts:
            raise RecipeError("train.early_stopping.general_loss_increase: no general texts to score")
        self.texts, self.tokenizer = texts, tokenizer
        self.max_increase, self.max_length, self.batch_size = max_increase, max_length, batch_size
        self.baseline: float | None = None
        self.history: list[dict] = []
        self.stopped_at: int | None = None

    def _loss(self, model, args) -> float:
        """Loss on the general texts, in the training precision (bf16 autocast when the run trains in it)."""
        import torch

        from peftkit.evaluate.forgetting import text_perplexity

        side = self.tokenizer.padding_side
        device = next(model.parameters()).device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bool(getattr(args, "bf16", False))):
            loss = text_perplexity(model, self.tokenizer, self.texts, self.max_length, self.batch_size)["loss"]
        self.tokenizer.padding_side = side
        return loss

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.baseline = self._loss(model, args)  # LoRA starts as the identity (B = 0): this is the base model's loss
        self.history.append({"step": state.global_step, "general_loss": self.baseline})

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        loss = self._loss(model, args)
        increase = (loss - self.baseline) / self.baseline
        self.history.append({"step": state.global_step, "general_loss": loss})
        if metrics is not None:
            metrics["eval_general_loss"] = loss
        if increase > self.max_increase and self.stopped_at is None:
            self.stopped_at = state.global_step
            control.should_training_stop = True


def general_texts_for_training(spec: TrainSpec, data_task: str, run_rows: list[dict]) -> list[str] | None:
    """Held-out bbc-news articles for the general-loss watch (None when it is off)."""
    es = spec.early_stopping
    if es.general_loss_increase is None:
        return None
    if data_task == "classification":
        raise RecipeError("train.early_stopping.general_loss_increase: needs a causal LM; a classification "
                          "task trains an encoder classifier (set it to null)")
    from peftkit.evaluate.forgetting import general_suite
    from peftkit.recipe import GeneralSuiteSpec

    sets = general_suite(GeneralSuiteSpec(bbc_news=es.general_examples, chatterbot=0, seed=spec.seed + 1), run_rows)
    return [r["text"] for r in sets[0].records]


def early_stopping_summary(spec: TrainSpec, trainer, callbacks: list[TrainerCallback]) -> dict | None:
    """What early stopping did: best step and val loss (the adapter kept), whether and why it stopped."""
    es = spec.early_stopping
    if not isinstance(es.patience, int) and es.general_loss_increase is None:
        return None
    state = trainer.state
    planned = state.max_steps
    general = next((c for c in callbacks if isinstance(c, GeneralLossCallback)), None)
    stopped_early = state.global_step < planned
    reason = None
    if general is not None and general.stopped_at is not None:
        reason = f"general-text loss rose more than {es.general_loss_increase:g} over the base at step {general.stopped_at}"
    elif stopped_early:
        reason = f"validation loss did not improve for {es.patience} rounds"
    best_step = state.best_global_step if isinstance(es.patience, int) else None
    summary = (f"{'stopped at step ' + str(state.global_step) + ' of ' + str(planned) + ': ' + reason if reason else 'ran all ' + str(planned) + ' steps'}"
               + (f"; kept the best checkpoint, step {best_step} (val loss {state.best_metric:.4f})" if best_step else ""))
    return {
        "patience": es.patience,
        "planned_steps": planned,
        "stopped_at_step": state.global_step,
        "stopped_early": stopped_early,
        "reason": reason,
        "best_step": best_step,
        "best_val_loss": state.best_metric if isinstance(es.patience, int) else None,
        "general_loss_history": general.history if general is not None else [],
        "summary": summary,
    }
