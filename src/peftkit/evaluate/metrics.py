"""Task metrics, computed from predictions and references only (no models here).

- extraction: JSON validity rate, per-field accuracy, mean field accuracy, exact match;
- classification: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix;
- generation: ROUGE-L F-measure (rouge-score, stemmed) and exact match of the answer text.
"""

from __future__ import annotations

import json
from typing import Any

_MISSING = object()


def parse_json_object(text: str) -> dict | None:
    """The JSON object a model answered, or None. Text after the object (a stray end token) is ignored."""
    text = text.strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _same(predicted: Any, expected: Any) -> bool:
    if isinstance(expected, str) and isinstance(predicted, str):
        return predicted.strip() == expected.strip()
    return predicted == expected and type(predicted) is type(expected)


def extraction_scores(predictions: list[str], references: list[str]) -> dict:
    """Score generated JSON answers against reference JSON strings.

    A field counts as right only when the answer has the key with the same value (a reference
    null must be answered with null). An answer that is not a JSON object gets every field wrong.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    refs = [json.loads(r) for r in references]
    fields = list(dict.fromkeys(k for r in refs for k in r))
    valid = exact = 0
    right = dict.fromkeys(fields, 0)
    counted = dict.fromkeys(fields, 0)
    for text, ref in zip(predictions, refs):
        pred = parse_json_object(text)
        valid += pred is not None
        pred = pred or {}
        exact += all(_same(pred.get(k, _MISSING), v) for k, v in ref.items()) and set(pred) == set(ref)
        for key, value in ref.items():
            counted[key] += 1
            right[key] += _same(pred.get(key, _MISSING), value)
    n = max(len(refs), 1)
    per_field = {k: right[k] / counted[k] for k in fields if counted[k]}
    return {
        "json_valid": valid / n,
        "field_accuracy": sum(per_field.values()) / max(len(per_field), 1),
        "exact_match": exact / n,
        "per_field": per_field,
        "examples": len(refs),
    }


def classification_scores(predicted: list[str], actual: list[str], labels: list[str]) -> dict:
    """Accuracy, macro-F1 over `labels`, per-class precision/recall/F1, and the confusion matrix
    (rows = actual, columns = predicted, in `labels` order)."""
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predictions for {len(actual)} labels")
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for p, a in zip(predicted, actual):
        matrix[index[a]][index[p]] += 1
    per_class = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        predicted_i = sum(row[i] for row in matrix)
        actual_i = sum(matrix[i])
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / actual_i if actual_i else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": actual_i}
    n = max(len(actual), 1)
    return {
        "accuracy": sum(matrix[i][i] for i in range(len(labels))) / n,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / max(len(labels), 1),
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "matrix": matrix},
        "examples": len(actual),
    }


def generation_scores(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE-L F-measure (Lin 2004, via rouge-score with Porter stemming) and the share of answers
    that equal the reference after trimming and collapsing whitespace (`text_exact_match`)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    exact = [" ".join(p.split()) == " ".join(r.split()) for p, r in zip(predictions, references)]
    n = max(len(references), 1)
    return {"rouge_l": sum(rouge) / n, "text_exact_match": sum(exact) / n, "examples": len(references)}
