"""The verdict of `peftkit eval`: did the tuned model beat the trivial baselines and the base model
by more than the noise of the test set, and is it degenerate?

    sections = assess(rows, train_rows, prepared, recipe, base_out, tuned_out, forgetting, tokenizer)
    sections["verdict"]["answer"]    # "yes" | "no" | "not distinguishable"
    sections["verdict"]["why"], sections["verdict"]["try"], sections["verdict"]["flags"]

How it decides, on the run's headline metric (headline.py):

- Paired bootstrap: the test rows are resampled with replacement (`eval.resamples` times, seeded
  by `eval.seed`); on each resample the metric is recomputed for the tuned model and for what it is
  compared with, on the same rows, and the 2.5th and 97.5th percentiles of the difference are its
  95% interval. Accuracy and ROUGE-L are means of a per-row score; field accuracy (mean over
  fields of the share of rows with that field right) and macro-F1 are recomputed from resampled
  counts, so the point estimate is exactly the number metrics.py reports.
- McNemar's exact test for classification accuracy: among the rows where exactly one of the two
  models is right, is "the tuned model is the right one" more frequent than a fair coin? Two-sided
  binomial tail, computed with math.comb.
- A comparison is `better` when the interval lies above 0 (and McNemar's p < 0.05 where it
  applies), `worse` when it lies below 0, `not better` when the tuned model's score is not above
  the other's, and `not distinguishable` otherwise.
- The answer is "yes" only when the tuned model is better than the best trivial baseline and than
  the base model, and no degenerate-model flag is raised; "no" when it is degenerate or not
  better than one of them; "not distinguishable" when it is ahead of both but an interval reaches 0.

Degenerate-model flags (each gated by `eval.fail_on: [collapsed]`): `collapsed` (a classifier
predicting one class for ≥ 95% of rows, or a generator giving the same text for most inputs),
`repeats` (most answers loop over the same few words), `never_stops` (most answers run to
eval.max_new_tokens). Forgetting past `eval.warn_forgetting` is a warning the verdict names as a
trade-off; `eval.max_forgetting` stays the gate (forgetting.py).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Callable, Iterator

import numpy as np

from peftkit.errors import VerdictGateError
from peftkit.evaluate.baselines import Baseline, task_baselines
from peftkit.evaluate.headline import headline_metric
from peftkit.evaluate.metrics import extraction_scores, generation_scores
from peftkit.recipe import MaxForgettingSpec

ALPHA = 0.05  # two-sided level of the intervals (95%) and of McNemar's test
RESAMPLE_CHUNK = 250  # resamples drawn at once: a [chunk, rows] weight matrix
COLLAPSE_SHARE = 0.95  # a classifier answering one class this often has collapsed
MOST = 0.5  # "most answers": the share of generated answers that makes a generator degenerate
BUDGET_SHARE = 0.9  # an answer of at least this share of eval.max_new_tokens tokens ran to the budget
# Measured: quickstart vs quickstart-replay (same 250 emails, 10% chatterbot replay), `peftkit eval` of each.
REPLAY_HINT = ("replay general data while training: data.mix (recipes/quickstart-replay.yaml: on the quickstart, "
               "bbc-news perplexity +16% instead of +33% and chatterbot perplexity -43% instead of +107%, "
               "field accuracy 0.929 instead of 0.932)")

# Resample weights [resamples, rows] (how often each test row was drawn) → the metric per resample [resamples].
Sampler = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------- per-row statistics


def metric_sampler(metric: str, answers: list[str], references: list[str], labels: list[str] | None = None) -> Sampler:
    """The metric of `answers` as a function of resample weights. With all weights 1 it equals the
    metrics.py value: accuracy and macro_f1 (classification_scores), field_accuracy
    (extraction_scores), rouge_l (generation_scores)."""
    n = len(references)
    if metric == "accuracy":
        correct = np.array([a == r for a, r in zip(answers, references)], dtype=float)  # [rows]
        return lambda w: w @ correct / n
    if metric == "macro_f1":
        index = {label: i for i, label in enumerate(labels)}
        actual = np.eye(len(labels))[[index[r] for r in references]]  # [rows, classes] one-hot
        predicted = np.eye(len(labels))[[index[a] for a in answers]]  # [rows, classes]
        hits = actual * predicted

        def macro_f1(w: np.ndarray) -> np.ndarray:
            tp, pred, act = w @ hits, w @ predicted, w @ actual  # [resamples, classes]
            # F1 = 2PR / (P + R) = 2 tp / (predicted + actual); 0 for a class never predicted nor present
            f1 = np.divide(2 * tp, pred + act, out=np.zeros_like(tp), where=pred + act > 0)
            return f1.mean(axis=1)  # over every label, as classification_scores

        return macro_f1
    if metric == "field_accuracy":
        per_row = [extraction_scores([a], [r])["per_field"] for a, r in zip(answers, references)]
        fields = list(dict.fromkeys(key for row in per_row for key in row))
        right = np.array([[row.get(k, 0.0) for k in fields] for row in per_row])  # [rows, fields]
        counted = np.array([[k in row for k in fields] for row in per_row], dtype=float)  # [rows, fields]

        def field_accuracy(w: np.ndarray) -> np.ndarray:
            r, c = w @ right, w @ counted  # [resamples, fields]
            present = c > 0
            share = np.divide(r, c, out=np.zeros_like(r), where=present)
            return share.sum(axis=1) / np.maximum(present.sum(axis=1), 1)  # mean over the fields drawn

        return field_accuracy
    if metric == "rouge_l":
        rouge = np.array([generation_scores([a], [r])["rouge_l"] for a, r in zip(answers, references)])  # [rows]
        return lambda w: w @ rouge / n
    raise ValueError(f"no per-row statistic for metric {metric!r}")


def resample_weights(rows: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of `rows` rows as counts: chunks of [resamples, rows], each row summing to `rows`."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        size = min(RESAMPLE_CHUNK, resamples - done)
        yield rng.multinomial(rows, np.full(rows, 1.0 / rows), size=size).astype(float)
        done += size


def paired_bootstrap(statistic: Sampler, rows: int, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of `statistic` (e.g. tuned − baseline, both on the same resampled rows)."""
    values = np.concatenate([statistic(w) for w in resample_weights(rows, resamples, seed)])
    low, high = np.percentile(values, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return float(low), float(high)


def mcnemar_exact(tuned_only: int, other_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: rows only the tuned model got right,
    rows only the other got right. Under "equally good" each discordant row is a fair coin."""
    n = tuned_only + other_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(tuned_only, other_only) + 1))
    return min(1.0, 2 * tail / 2**n)


def compare(metric: str, against: str, tuned: list[str], other: list[str], references: list[str],
            labels: list[str] | None, resamples: int, seed: int) -> dict:
    """Tuned vs one other model or baseline on `metric`: both scores, the difference, its paired
    bootstrap 95% interval, McNemar's test for accuracy, and the outcome."""
    rows = len(references)
    t, o = metric_sampler(metric, tuned, references, labels), metric_sampler(metric, other, references, labels)
    everything = np.ones((1, rows))
    tuned_score, other_score = float(t(everything)[0]), float(o(everything)[0])
    low, high = paired_bootstrap(lambda w: t(w) - o(w), rows, resamples, seed)
    out = {"metric": metric, "against": against, "tuned": tuned_score, "other": other_score,
           "difference": tuned_score - other_score, "ci95": [low, high]}
    if metric == "accuracy":
        t_right = [a == r for a, r in zip(tuned, references)]
        o_right = [a == r for a, r in zip(other, references)]
        tuned_only = sum(x and not y for x, y in zip(t_right, o_right))
        other_only = sum(y and not x for x, y in zip(t_right, o_right))
        out["mcnemar"] = {"tuned_only_right": tuned_only, "other_only_right": other_only,
                          "p_value": mcnemar_exact(tuned_only, other_only)}
    out["outcome"] = outcome(out)
    return out


def outcome(comparison: dict) -> str:
    """better | worse | not better | not distinguishable, from the interval (and McNemar's p)."""
    low, high = comparison["ci95"]
    significant = comparison.get("mcnemar", {}).get("p_value", 0.0) < ALPHA
    if low > 0 and significant:
        return "better"
    if high < 0 and significant:
        return "worse"
    if comparison["difference"] <= 0:
        return "not better"
    return "not distinguishable"


# ------------------------------------------------------------------------------- degenerate models


def classifier_flags(predicted: list[str], actual: list[str], labels: list[str]) -> list[dict]:
    """`collapsed` when one class is ≥ 95% of the predictions, unless the references are that
    skewed too and every other class present is still found at least once."""
    n = len(predicted)
    if not n:
        return []
    top, count = Counter(predicted).most_common(1)[0]
    share, true_share = count / n, actual.count(top) / n
    missed = [label for label in labels if label != top and label in actual
              and not any(p == a == label for p, a in zip(predicted, actual))]
    if share < COLLAPSE_SHARE or (true_share >= COLLAPSE_SHARE and not missed):
        return []
    message = (f"predicts '{top}' for {count} of {n} test rows ({share:.0%}; it is {true_share:.0%} "
               f"of the references)" + (f", recall 0 on {', '.join(repr(m) for m in missed)}" if missed else ""))
    return [{"name": "collapsed", "message": message}]


def loops(text: str) -> bool:
    """An answer that repeats itself: at most half of its word 3-grams are distinct (8+ words), or
    of its character 5-grams for long answers without spaces."""
    words = text.split()
    if len(words) >= 8:
        grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    elif len(text) >= 40:
        grams = [text[i : i + 5] for i in range(len(text) - 4)]
    else:
        return False
    return len(set(grams)) <= len(grams) / 2


def generator_flags(answers: list[str], references: list[str], token_counts: list[int] | None,
                    max_new_tokens: int) -> list[dict]:
    """`collapsed` (the same text for most inputs, more often than the references repeat), `repeats`
    (most answers loop), `never_stops` (most answers ran to max_new_tokens)."""
    n = len(answers)
    if n < 2:
        return []
    flags = []
    top, count = Counter(" ".join(a.split()) for a in answers).most_common(1)[0]
    reference_repeats = Counter(_canonical(r) for r in references).most_common(1)[0][1]
    if count / n >= MOST and count > reference_repeats:
        flags.append({"name": "collapsed", "message": f"{count} of {n} answers are the same text ({count / n:.0%}): "
                                                      f"{top[:60]!r}"})
    looping = sum(loops(a) for a in answers)
    if looping / n >= MOST:
        flags.append({"name": "repeats", "message": f"{looping} of {n} answers loop over the same few words"})
    if token_counts is not None:
        ran = sum(c >= BUDGET_SHARE * max_new_tokens for c in token_counts)
        if ran / n >= MOST:
            flags.append({"name": "never_stops", "message": f"{ran} of {n} answers ran to eval.max_new_tokens "
                                                            f"({max_new_tokens} tokens) without ending"})
    return flags


def _canonical(reference: str) -> str:
    try:
        return json.dumps(json.loads(reference), sort_keys=True)
    except json.JSONDecodeError:
        return " ".join(reference.split())


# ------------------------------------------------------------------------------- forgetting warnings


def forgetting_warnings(forgetting: dict, spec: MaxForgettingSpec) -> list[dict]:
    """The changes of the `forgetting` section (metrics.json) past the warning levels of `spec`
    (eval.warn_forgetting); they warn, they do not fail."""
    from peftkit.evaluate.forgetting import check_gate

    kinds = {name: s["kind"] for name, s in forgetting.get("sets", {}).items()}
    warnings = []
    for check in check_gate(forgetting.get("deltas", {}), kinds, spec):
        if check.passed:
            continue
        relative = check.threshold_field in ("general_ppl_increase", "chat_loss_increase")
        change = f"{check.delta:+.0%}" if relative else f"{check.delta * 100:+.1f} points"
        level = f"+{check.allowed:.0%}" if relative else f"-{check.allowed * 100:g} points"
        warnings.append({"set": check.set, "metric": check.metric, "delta": check.delta, "allowed": check.allowed,
                         "field": f"eval.warn_forgetting.{check.threshold_field}",
                         "message": f"{check.set} {check.metric} {change} (base {check.base:.4g} → tuned "
                                    f"{check.tuned:.4g}; warns past {level})"})
    return warnings


# ------------------------------------------------------------------------------- the verdict


def judge(metric: str | None, references: list[str] | None, labels: list[str] | None, tuned: list[str] | None,
          base: list[str] | None, baselines: list[Baseline], base_scores: dict, tuned_scores: dict,
          flags: list[dict], warnings: list[dict], resamples: int = 2000, seed: int = 0) -> dict:
    """The verdict object: {"answer", "why", "try", "headline", "intervals", "flags", "warnings"}.

    Args:
        metric: the headline metric; `tuned`, `base` and each baseline's answers are compared on it
            row by row (and on macro_f1 too for classification, shown but not deciding).
        tuned, base: per-row answers (None when the headline has no per-row score, e.g. loss).
    """
    trade_off = [f"trade-off: {w['message']}" for w in warnings]
    tries = [REPLAY_HINT] if warnings else []
    if metric is None or tuned is None or base is None or references is None:
        b, t = base_scores.get(metric), tuned_scores.get(metric)
        scores = f"base {b:.4f} → tuned {t:.4f}" if b is not None and t is not None else "no scores"
        return _verdict("not distinguishable", [f"{metric or 'no metric'}: {scores}, without an interval: "
                                                "per-example scores are only kept for generated or classified answers"]
                        + trade_off, ["add generation to eval.metrics to judge the answers with an interval"] + tries,
                        {"metric": metric, "tuned": t, "base": b}, [], flags, warnings, resamples, seed)

    others = [(b.name, b.answers) for b in baselines] + [("base", base)]
    intervals = [compare(metric, name, tuned, answers, references, labels, resamples, seed) for name, answers in others]
    if metric == "accuracy":  # macro-F1 shows what accuracy hides on imbalanced classes
        intervals += [compare("macro_f1", name, tuned, answers, references, labels, resamples, seed)
                      for name, answers in others]
    headline = [c for c in intervals if c["metric"] == metric]
    best = max(headline[:-1], key=lambda c: c["other"]) if baselines else None
    deciding = [c for c in (best, headline[-1]) if c is not None]
    for c in deciding:
        c["deciding"] = True
    outcomes = [c["outcome"] for c in deciding]
    if flags or any(o in ("worse", "not better") for o in outcomes):
        answer = "no"
    elif all(o == "better" for o in outcomes):
        answer = "yes"
    else:
        answer = "not distinguishable"
    why = [flag_text(f) for f in flags] + [_sentence(c) for c in deciding]
    if metric == "accuracy" and baselines:
        macro = [c for c in intervals if c["metric"] == "macro_f1" and c["against"] != "base"]
        best_macro = max(macro, key=lambda c: c["other"])
        if best_macro["outcome"] != "better":
            why.append(_sentence(best_macro))
    summary = {"metric": metric, "tuned": headline[-1]["tuned"], "base": headline[-1]["other"],
               "best_baseline": best["against"] if best else None, "baseline": best["other"] if best else None}
    return _verdict(answer, why + trade_off, _suggestions(answer, flags, outcomes, metric) + tries, summary, intervals,
                    flags, warnings, resamples, seed)


def _verdict(answer: str, why: list[str], tries: list[str], headline: dict, intervals: list[dict], flags: list[dict],
             warnings: list[dict], resamples: int, seed: int) -> dict:
    return {"answer": answer, "why": "; ".join(why), "try": "; ".join(dict.fromkeys(tries)), "headline": headline,
            "intervals": intervals, "flags": flags, "warnings": warnings, "resamples": resamples, "seed": seed}


def flag_text(flag: dict) -> str:
    return f"{flag['name']}: {flag['message']}"


def display_name(name: str) -> str:
    return "the base model" if name == "base" else name.replace("_", " ")


def _sentence(c: dict) -> str:
    low, high = c["ci95"]
    test = f", McNemar p={c['mcnemar']['p_value']:.2g}" if "mcnemar" in c else ""
    return (f"{c['metric']} {c['tuned']:.4f} vs {display_name(c['against'])} {c['other']:.4f}: {c['outcome']} "
            f"({c['difference']:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}]{test})")


def _suggestions(answer: str, flags: list[dict], outcomes: list[str], metric: str) -> list[str]:
    tries = []
    names = {f["name"] for f in flags}
    if "collapsed" in names and metric == "accuracy":
        tries.append("it learned the class prior, not the task: train longer or at a higher train.lr, balance or "
                     "weight the classes, and check that the label follows from the text")
    elif "collapsed" in names:
        tries.append("it answers the same whatever the input: train longer or at another train.lr, and check the "
                     "prompts and the template (`peftkit data prepare`)")
    if "repeats" in names:
        tries.append("answers loop: train on answers that end with the stop token, or longer")
    if "never_stops" in names:
        tries.append("answers run to the budget: raise eval.max_new_tokens if the references are longer, "
                     "else check that the template ends answers with the stop token (`peftkit data prepare`)")
    if answer == "not distinguishable":
        tries.append("more test rows narrow the interval (data.split.test or a larger test file); or train longer")
    elif answer == "no" and not flags:
        worse = "worse" in outcomes
        tries.append(("it is worse than a trivial answer or the base: check the data and the template; "
                      if worse else "") + "train longer or at another train.lr, or compare methods (`peftkit compare`)")
    return tries


def verdict_line(verdict: dict) -> str:
    """'Yes — …' / 'No — …' / 'Not distinguishable — …': the answer and why, in one line."""
    return f"{verdict['answer'].capitalize()} — {verdict['why']}"


def raise_if_gated(verdict: dict, fail_on: list[str], results: dict | None = None) -> None:
    """VerdictGateError when a gate of eval.fail_on applies: `collapsed` (any degenerate-model flag),
    `not_better` (an answer other than yes). Called after everything is written."""
    failed = []
    if "collapsed" in fail_on and verdict["flags"]:
        failed.append("eval.fail_on collapsed: the tuned model is degenerate (" +
                      "; ".join(flag_text(f) for f in verdict["flags"]) + ")")
    if "not_better" in fail_on and verdict["answer"] != "yes":
        failed.append(f"eval.fail_on not_better: the verdict is {verdict['answer']!r}: {verdict['why']}")
    if failed:
        error = VerdictGateError("verdict gate failed: " + " | ".join(failed))
        error.results = results
        raise error


# ------------------------------------------------------------------------------- one evaluation


def assess(rows: list[dict], train_rows: list[dict], prepared, recipe, base_out: dict, tuned_out: dict,
           forgetting: dict, tokenizer) -> dict:
    """{"baselines", "verdict"} of one evaluation, the two sections metrics.json gains.

    Args:
        rows: the test rows scored; train_rows: the training split (label frequencies).
        base_out, tuned_out: run._score's outputs ({"scores", "answers", "references"}).
        forgetting: the forgetting section of metrics.json (for the warnings of eval.warn_forgetting).
        tokenizer: counts the tokens of generated answers (the never-stops check).
    """
    spec = recipe.eval
    metric = headline_metric(tuned_out["scores"])
    classification = prepared.task == "classification"
    references = [r["label"] for r in rows] if classification else tuned_out.get("references")
    tuned, base = tuned_out.get("answers"), base_out.get("answers")
    judged = metric in ("accuracy", "field_accuracy", "rouge_l") and tuned is not None and references is not None
    baselines = (task_baselines(metric, rows, references, train_rows, prepared.task, prepared.instruction,
                                prepared.labels, spec.seed) if judged else [])
    if tuned is None:
        flags = []
    elif classification:
        flags = classifier_flags(tuned, references, prepared.labels)
    else:
        counts = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in tuned]
        flags = generator_flags(tuned, references, counts, spec.max_new_tokens)
    verdict = judge(metric, references if judged else None, prepared.labels, tuned if judged else None, base,
                    baselines, base_out["scores"], tuned_out["scores"], flags,
                    forgetting_warnings(forgetting, spec.warn_forgetting), spec.resamples, spec.seed)
    return {"baselines": {b.name: b.section() for b in baselines}, "verdict": verdict}
