"""Causal-LM supervised fine-tuning with trl: chat template applied, loss on assistant tokens only.

Each record becomes a conversational prompt/completion pair (`data.records.to_prompt_completion`);
trl renders both with the model's chat template and masks the prompt, so the loss covers the
assistant's answer (and its end-of-turn token) and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from peftkit.data.prepare import PreparedData, read_split
from peftkit.data.records import to_prompt_completion
from peftkit.errors import DataError
from peftkit.recipe import Recipe
from peftkit.train.common import trainer_kwargs


def build_sft_trainer(model, tokenizer, recipe: Recipe, prepared: PreparedData, run_dir: Path, callbacks: list):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if prepared.task == "preference":
        raise DataError("data.task: preference pairs are prepared and stored for DPO, which `peftkit train` "
                        "does not run yet; use `peftkit data prepare` to check and split them")

    def as_dataset(split: str):
        rows = [to_prompt_completion(r, prepared.task, prepared.instruction) for r in read_split(prepared.data_dir, split)]
        return Dataset.from_list(rows) if rows else None

    train_ds, val_ds = as_dataset("train"), as_dataset("val")
    args = SFTConfig(
        **trainer_kwargs(recipe.train, run_dir, has_val=val_ds is not None),
        max_length=recipe.data.max_length,
        completion_only_loss=True,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
