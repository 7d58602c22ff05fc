"""The headline metric of a task: the one number that answers "did it work" for a run.

    headline_metric(metrics["tuned"])  → "field_accuracy" | "accuracy" | "rouge_l" | "loss" | None

The report's verdict, `peftkit runs`, `peftkit compare` and the verdict of `peftkit eval` all call
this one function, so they never disagree about which number a run is judged on. The scores
say which task they came from: extraction writes field_accuracy, classification accuracy,
generation (chat and completion runs with `generation` in eval.metrics) rouge_l, and a chat run
scored by perplexity alone has only its loss.
"""

from __future__ import annotations

# In order of preference: the first one a run's scores have is its headline.
HEADLINE = ("field_accuracy", "accuracy", "rouge_l", "loss")
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})


def headline_metric(scores: dict) -> str | None:
    """The headline metric among `scores` (a base or tuned section of metrics.json), or None."""
    return next((key for key in HEADLINE if key in scores), None)


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER
