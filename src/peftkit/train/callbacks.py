"""Trainer callbacks: a rich progress bar (loss, rate, ETA) and a plain-text training log."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


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
