"""Sequence classification with the transformers Trainer: text → label id, cross-entropy loss.

Texts are tokenised once and cached in RUN/data/tokens/ (`train.tokens`); batches are padded
per batch and grouped by length; the run's speed plan (`train.speed`) sets bf16 autocast.
`train.class_weights` weighs the cross-entropy per class (inverse frequency against imbalance);
the trainer's `notes` say which weights were used and why, for train.log.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from peftkit.data.prepare import PreparedData, read_split
from peftkit.errors import RecipeError
from peftkit.recipe import Recipe
from peftkit.train.common import trainer_kwargs
from peftkit.train.speed import SpeedPlan, plan_speed


def tokenize_for_classification(rows: list[dict], tokenizer, labels: list[str], max_length: int, chunk: int = 256):
    """A datasets.Dataset of input_ids/attention_mask/labels (truncated to max_length).

    Texts go to the tokenizer `chunk` at a time: a fast tokenizer encodes a text whole before
    truncating it, so a split of long articles at once holds all their full encodings (bbc-news,
    1,650 articles: resident memory +89 MB at once, +16 MB in chunks of 256; stop 19, one traced run).
    """
    from datasets import Dataset

    label2id = {label: i for i, label in enumerate(labels)}
    columns: dict[str, list] = {}
    for start in range(0, len(rows), chunk):
        enc = tokenizer([r["text"] for r in rows[start:start + chunk]], truncation=True, max_length=max_length)
        for name, values in enc.items():
            columns.setdefault(name, []).extend(values)
    return Dataset.from_dict({**columns, "labels": [label2id[r["label"]] for r in rows]})


IMBALANCE_FOR_AUTO = 1.5  # commonest / rarest class count from which `auto` weighs the classes


def class_weights(setting: str | dict[str, float], train_labels: list[str], labels: list[str]) -> tuple[list[float] | None, str]:
    """Loss weight per label id (None: plain cross-entropy) and the line train.log gets about it.

    Inverse frequency: weight_c = N / (K · n_c), so every class weighs as much in total and the mean
    weight over training examples is 1 (the loss keeps its scale). A label with no training example
    gets weight 1 (it cannot be learned from this split; the data report already says so).
    """
    counts = Counter(train_labels)
    shares = ", ".join(f"{label} {counts.get(label, 0)}" for label in labels)
    if isinstance(setting, dict):
        missing = [label for label in labels if label not in setting]
        unknown = [label for label in setting if label not in labels]
        if missing or unknown:
            raise RecipeError(
                "train.class_weights: give a weight for every label of the data"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; not labels of the data: {', '.join(unknown)}" if unknown else "")
                + f" (labels: {', '.join(labels)})")
        weights = [float(setting[label]) for label in labels]
        return weights, "class weights (train.class_weights, given): " + ", ".join(
            f"{label} {w:g}" for label, w in zip(labels, weights))
    present = [counts[label] for label in labels if counts.get(label)]
    ratio = max(present) / min(present) if present else 1.0
    if setting == "off" or (setting == "auto" and ratio < IMBALANCE_FOR_AUTO):
        why = "off" if setting == "off" else f"auto: commonest/rarest class {ratio:.2f}x < {IMBALANCE_FOR_AUTO}x"
        return None, f"class weights: none ({why}); training labels: {shares}"
    total, k = sum(counts.values()), len(present)
    weights = [total / (k * counts[label]) if counts.get(label) else 1.0 for label in labels]
    why = "inverse" if setting == "inverse" else f"auto: commonest/rarest class {ratio:.2f}x >= {IMBALANCE_FOR_AUTO}x"
    return weights, f"class weights: inverse frequency ({why}): " + ", ".join(
        f"{label} {w:.2f} ({counts.get(label, 0)})" for label, w in zip(labels, weights))


def weighted_cross_entropy(weights: list[float]):
    """A Trainer `compute_loss_func`: cross-entropy with a weight per class.

    Summed over the examples and divided by the examples of the whole accumulated batch when the
    Trainer gives that count (a weighted mean over one micro-batch otherwise), so gradient
    accumulation gives the same step as one large batch.
    """
    import torch

    weight = torch.tensor(weights, dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        w = weight.to(logits.device)
        if num_items_in_batch is None:
            return torch.nn.functional.cross_entropy(logits.float(), labels, weight=w)
        summed = torch.nn.functional.cross_entropy(logits.float(), labels, weight=w, reduction="sum")
        return summed / num_items_in_batch

    return loss


def build_classify_trainer(
    model, tokenizer, recipe: Recipe, prepared: PreparedData, run_dir: Path, callbacks: list, plan: SpeedPlan | None = None
):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from peftkit.train.checkpoint import SafetensorsCheckpoints
    from peftkit.train.sampling import ShuffledLengthBatches
    from peftkit.train.tokens import cache_key, cached_tokens

    plan = plan or plan_speed(recipe.train, "sequence-classification", getattr(model, "config", None), recipe.data.max_length,
                               method=recipe.method.kind)

    def as_dataset(split: str):
        rows = read_split(prepared.data_dir, split)
        if not rows:
            return None
        key = cache_key(prepared.data_dir / f"{split}.jsonl", tokenizer, max_length=recipe.data.max_length,
                        labels=prepared.labels, kind="classification")
        return cached_tokens(
            prepared.data_dir / "tokens" / split,
            key,
            lambda: tokenize_for_classification(rows, tokenizer, prepared.labels, recipe.data.max_length),
        )

    train_ds, val_ds = as_dataset("train"), as_dataset("val")
    weights, note = class_weights(recipe.train.class_weights, [r["label"] for r in read_split(prepared.data_dir, "train")],
                                  prepared.labels)
    args = TrainingArguments(**{**trainer_kwargs(recipe.train, run_dir, has_val=val_ds is not None), **plan.trainer_overrides()})
    class ClassifyTrainer(SafetensorsCheckpoints, ShuffledLengthBatches, Trainer):
        """transformers' Trainer with length-grouped batches in random order (peftkit.train.sampling) and
        safetensors checkpoints (peftkit.train.checkpoint)."""

    trainer = ClassifyTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
        compute_loss_func=weighted_cross_entropy(weights) if weights is not None else None,
    )
    trainer.notes = [note]
    return trainer
