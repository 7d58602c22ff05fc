"""Trivial baselines: what a model that learned nothing about the inputs would score on the test rows.

    baselines = task_baselines("accuracy", test_rows, references, train_rows, prepared, seed=0)
    baselines[0].name, baselines[0].scores["accuracy"]        # "majority_class", 0.72

A tuned model only worked if it beats these as well as the base model: on an imbalanced test set
the majority class alone scores the share of that class, and a classifier that learned only the
class prior scores exactly that. Per headline metric (see headline.py):

- accuracy (classification): `majority_class` answers the most frequent label of the training
  split for every row; `stratified_random` draws each row's label at random with the training
  split's label frequencies (seeded);
- field_accuracy (extraction): `empty_object` answers `{}`; `null_fields` answers every field of
  the references' schema as null (right wherever the reference is null);
- rouge_l (generation): `copy_input` answers the prompt's last user turn (or the plain-text
  prompt) unchanged.

Each baseline's answers are scored with the same function of metrics.py as the models, so its
numbers sit in the same table as base and tuned; its answers (one per test row, in order) feed
the paired comparisons of verdict.py.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from peftkit.data.records import to_prompt_completion
from peftkit.evaluate.metrics import classification_scores, extraction_scores, generation_scores


@dataclass
class Baseline:
    """One trivial baseline on the test rows."""

    name: str  # e.g. "majority_class"
    description: str  # how its answers were made, for the report
    answers: list[str]  # one per test row, in the test rows' order
    scores: dict  # the metrics.py function of the task applied to `answers`

    def section(self) -> dict:
        """Its entry in the `baselines` section of metrics.json (the answers stay out)."""
        return {"description": self.description, "scores": self.scores}


def task_baselines(metric: str, rows: list[dict], references: list[str], train_rows: list[dict], task: str,
                   instruction: str | None, labels: list[str] | None, seed: int) -> list[Baseline]:
    """The trivial baselines for a run judged on `metric` (its headline metric); none for `loss`.

    Args:
        rows: the test rows that were scored, in order.
        references: their expected answers (label names for classification, the reference text otherwise).
        train_rows: the run's training split (label frequencies for the classification baselines).
        seed: seed of the stratified-random draw.
    """
    if metric == "accuracy":
        return classification_baselines(references, train_rows, labels or sorted(set(references)), seed)
    if metric == "field_accuracy":
        return extraction_baselines(references)
    if metric == "rouge_l":
        return [copy_input_baseline(rows, references, task, instruction)]
    return []


def label_frequencies(train_rows: list[dict], labels: list[str]) -> dict[str, int]:
    """How often each label occurs in the training split, in `labels` order (rows mixed in for replay
    carry no label and are not counted)."""
    counts = Counter(r["label"] for r in train_rows if r.get("label") in labels)
    return {label: counts.get(label, 0) for label in labels}


def classification_baselines(references: list[str], train_rows: list[dict], labels: list[str],
                             seed: int) -> list[Baseline]:
    """Majority class and stratified random, both from the training split's label frequencies."""
    counts = label_frequencies(train_rows, labels)
    total = sum(counts.values())
    if not total:  # no labelled training rows to learn a prior from: the test rows' own
        counts = {label: references.count(label) for label in labels}
        total = sum(counts.values())
    majority = max(labels, key=lambda label: counts[label])  # ties: the first label in sorted order
    share = counts[majority] / total
    frequencies = np.array([counts[label] / total for label in labels])
    drawn = np.random.default_rng(seed).choice(len(labels), size=len(references), p=frequencies)
    stratified = [labels[i] for i in drawn]
    prior = ", ".join(f"{label} {counts[label] / total:.0%}" for label in labels)
    return [
        Baseline("majority_class", f"always '{majority}', the most frequent training label ({share:.0%} of train)",
                 [majority] * len(references), classification_scores([majority] * len(references), references, labels)),
        Baseline("stratified_random",
                 f"a random label per row drawn with the training frequencies ({prior}; seed {seed})",
                 stratified, classification_scores(stratified, references, labels)),
    ]


def extraction_baselines(references: list[str]) -> list[Baseline]:
    """An empty JSON object, and every field of the references' schema answered null."""
    fields = list(dict.fromkeys(key for r in references for key in json.loads(r)))
    nulls = json.dumps(dict.fromkeys(fields))
    return [
        Baseline("empty_object", "answers {} for every row", ["{}"] * len(references),
                 extraction_scores(["{}"] * len(references), references)),
        Baseline("null_fields", f"answers every field ({', '.join(fields)}) as null for every row",
                 [nulls] * len(references), extraction_scores([nulls] * len(references), references)),
    ]


def prompt_text(row: dict, task: str, instruction: str | None) -> str:
    """The input a model answers: the last user turn of a chat prompt, or a plain-text prompt as it is."""
    prompt = to_prompt_completion(row, task, instruction)["prompt"]
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def copy_input_baseline(rows: list[dict], references: list[str], task: str, instruction: str | None) -> Baseline:
    """Answers each prompt with its own input, unchanged."""
    answers = [prompt_text(row, task, instruction) for row in rows]
    return Baseline("copy_input", "answers each row with its input (the last user turn) unchanged", answers,
                    generation_scores(answers, references))
