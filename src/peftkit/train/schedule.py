"""The training schedule a recipe leaves to peftkit: learning rate, epochs and early stopping from the task,
the method and the size of the data.

    spec, notes = resolve_schedule(recipe.train, task="sequence-classification", method="lora", train_rows=527, has_val=True)
    spec.lr, spec.epochs, spec.eval_every, spec.early_stopping.patience   # concrete values
    notes                                                                  # lines for train.log: what and why

Only fields left at `auto` change; a value the recipe gives is kept as given. The choices come from
`benchmarks/defaults_sweep.py` on public sets that are not the built-ins (benchmarks/defaults.md):

- learning rate: LoRA-family adapters learn at rates ~10x a full fine-tune's; an encoder with a new
  classification head needs 1e-3 to leave the class prior within a few hundred steps (2e-4, the usual
  decoder LoRA rate, predicted the majority class on every set tried), a decoder's LoRA 2e-4, prompt and
  prefix tuning 1e-2 (virtual tokens move slowly), IA3 3e-3, a full fine-tune 2e-5.
- epochs: enough passes that training sees about `TARGET_EXAMPLES` examples (2,000 for a classifier,
  1,000 for a causal LM; small sets get more passes), between 1 and `MAX_EPOCHS`.
- early stopping: for a causal LM with more than one pass, on validation loss (the training objective,
  token by token), checked twice per epoch with the best checkpoint kept. Not for a classifier: its
  validation loss bottoms out while accuracy still climbs (the model grows confident), so the kept
  best-loss checkpoint scored 4–9 points below the last on four sentiment sets (benchmarks/defaults.md).
"""

from __future__ import annotations

import math

from peftkit.recipe import TrainSpec

# (model task, method kind) → learning rate; the model task is "sequence-classification" or "causal-lm"
LEARNING_RATES = {
    "sequence-classification": {"lora": 1e-3, "qlora": 1e-3, "loha": 1e-3, "lokr": 1e-3, "ia3": 3e-3, "bottleneck": 1e-3,
                       "prompt": 1e-2, "prefix": 1e-2, "full": 2e-5},
    "causal-lm": {"lora": 2e-4, "qlora": 2e-4, "loha": 2e-4, "lokr": 2e-4, "ia3": 3e-3, "bottleneck": 2e-4,
                  "prompt": 1e-2, "prefix": 1e-2, "full": 2e-5},
}
TARGET_EXAMPLES = {"sequence-classification": 2000, "causal-lm": 1000}  # training examples seen in all
MAX_EPOCHS = 10
EVALS_PER_EPOCH = 2  # validation rounds per epoch when early stopping is on
PATIENCE = 2  # rounds without improvement before stopping


def resolve_schedule(spec: TrainSpec, task: str, method: str, train_rows: int, has_val: bool,
                     world_size: int = 1) -> tuple[TrainSpec, list[str]]:
    """`spec` with its `auto` learning rate, epochs and early stopping made concrete, and why."""
    notes: list[str] = []
    update: dict = {}
    if spec.lr == "auto":
        update["lr"] = LEARNING_RATES[task].get(method, LEARNING_RATES[task]["lora"])
        notes.append(f"schedule: lr {update['lr']:g} (auto: {method} on a {task} model)")
    if spec.epochs == "auto":
        if spec.max_steps > 0:
            update["epochs"] = 1.0  # ignored: max_steps decides the length
        else:
            wanted = TARGET_EXAMPLES[task] / max(train_rows, 1)
            epochs = float(min(max(math.ceil(wanted), 1), MAX_EPOCHS))
            update["epochs"] = epochs
            notes.append(f"schedule: {epochs:g} epochs (auto: {train_rows} training examples; about "
                         f"{TARGET_EXAMPLES[task]} examples seen in all, 1 to {MAX_EPOCHS} passes)")
    es = spec.early_stopping
    if es.patience == "auto":
        epochs = update.get("epochs", spec.epochs)
        steps_per_epoch = max(math.ceil(train_rows / (spec.batch_size * spec.grad_accum * world_size)), 1)
        on = (spec.epochs == "auto" and spec.max_steps <= 0 and epochs > 1 and has_val and method != "bottleneck"
              and task == "causal-lm")
        if on:
            every = spec.eval_every or max(steps_per_epoch // EVALS_PER_EPOCH, 1)
            update["eval_every"] = every
            update["early_stopping"] = es.model_copy(update={"patience": PATIENCE})
            notes.append(f"schedule: early stopping on validation loss every {every} steps, patience {PATIENCE}, "
                         f"the best checkpoint kept (auto: {epochs:g} epochs)")
        else:
            why = ("a classifier: its validation loss bottoms out before its accuracy peaks" if task != "causal-lm"
                   else "no validation split" if not has_val else "bottleneck adapters cannot be checkpointed yet"
                   if method == "bottleneck" else "one pass or a fixed length")
            update["early_stopping"] = es.model_copy(update={"patience": None})
            if spec.epochs == "auto" or spec.eval_every:
                notes.append(f"schedule: no early stopping (auto: {why})")
    return spec.model_copy(update=update), notes
