"""Sequence classification with the transformers Trainer: text → label id, cross-entropy loss."""

from __future__ import annotations

from pathlib import Path

from peftkit.data.prepare import PreparedData, read_split
from peftkit.recipe import Recipe
from peftkit.train.common import trainer_kwargs


def tokenize_for_classification(rows: list[dict], tokenizer, labels: list[str], max_length: int):
    """A datasets.Dataset of input_ids/attention_mask/labels (truncated to max_length)."""
    from datasets import Dataset

    label2id = {label: i for i, label in enumerate(labels)}
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
    return Dataset.from_dict({**enc, "labels": [label2id[r["label"]] for r in rows]})


def build_classify_trainer(model, tokenizer, recipe: Recipe, prepared: PreparedData, run_dir: Path, callbacks: list):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    def as_dataset(split: str):
        rows = read_split(prepared.data_dir, split)
        return tokenize_for_classification(rows, tokenizer, prepared.labels, recipe.data.max_length) if rows else None

    train_ds, val_ds = as_dataset("train"), as_dataset("val")
    args = TrainingArguments(**trainer_kwargs(recipe.train, run_dir, has_val=val_ds is not None))
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
