"""The verdict: paired bootstrap intervals and McNemar's test against known values, degenerate-model
flags, forgetting warnings, the fail_on gates, and one tiny BERT run that learned only the class prior."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.data.prepare import PreparedData
from peftkit.errors import VerdictGateError
from peftkit.evaluate.metrics import classification_scores, extraction_scores, generation_scores
from peftkit.evaluate.verdict import (assess, classifier_flags, compare, forgetting_warnings, generator_flags, judge,
                                      mcnemar_exact, metric_sampler, paired_bootstrap, raise_if_gated,
                                      resample_weights, verdict_line)
from peftkit.recipe import WarnForgettingSpec, load_recipe

LABELS = ["neg", "pos"]


# ------------------------------------------------------------------------------- known cases


def test_bootstrap_of_an_all_ones_difference_is_exactly_one():
    ones = np.ones(37)
    assert paired_bootstrap(lambda w: w @ ones / 37, 37, resamples=500) == (1.0, 1.0)
    # the same through compare(): right on every row vs wrong on every row
    c = compare("accuracy", "always_wrong", ["pos"] * 37, ["neg"] * 37, ["pos"] * 37, LABELS, 500, 0)
    assert c["difference"] == 1.0 and c["ci95"] == [1.0, 1.0] and c["outcome"] == "better"
    assert c["mcnemar"] == {"tuned_only_right": 37, "other_only_right": 0, "p_value": 2 / 2**37}


def test_bootstrap_of_two_rows_hand_computed():
    # differences [0, 1]: a resample draws each row 0, 1 or 2 times, so its mean is 0 (1/4), 0.5 (1/2) or 1 (1/4)
    diffs = np.array([0.0, 1.0])
    means = np.concatenate([w @ diffs / 2 for w in resample_weights(2, 4000, seed=1)])
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}
    assert (means == 0.5).mean() == pytest.approx(0.5, abs=0.03)
    assert (means == 0.0).mean() == pytest.approx(0.25, abs=0.03)
    assert paired_bootstrap(lambda w: w @ diffs / 2, 2, resamples=4000, seed=1) == (0.0, 1.0)


def test_bootstrap_interval_matches_the_normal_approximation():
    # 400 rows, half of them +1: mean 0.5, standard error sqrt(0.25 / 400) = 0.025, 95% ≈ 0.5 ± 1.96 · 0.025
    diffs = np.array([1.0, 0.0] * 200)
    low, high = paired_bootstrap(lambda w: w @ diffs / 400, 400, resamples=4000, seed=0)
    assert low == pytest.approx(0.451, abs=0.01) and high == pytest.approx(0.549, abs=0.01)


def test_mcnemar_exact_against_hand_computed_p_values():
    # 10 vs 2 discordant rows: 2 · (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 · 79 / 4096
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096)
    assert mcnemar_exact(2, 10) == pytest.approx(158 / 4096)
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_point_estimates_are_the_metrics_py_numbers():
    rng = random.Random(0)
    labels = ["a", "b", "c", "d"]  # d never occurs: it still counts in the macro average, as in metrics.py
    actual = [rng.choice("abc") for _ in range(50)]
    predicted = [rng.choice("abc") for _ in range(50)]
    everything = np.ones((1, 50))
    scores = classification_scores(predicted, actual, labels)
    assert metric_sampler("accuracy", predicted, actual, labels)(everything)[0] == pytest.approx(scores["accuracy"])
    assert metric_sampler("macro_f1", predicted, actual, labels)(everything)[0] == pytest.approx(scores["macro_f1"])

    refs = [json.dumps({"carrier": "MSC", "date": None}), json.dumps({"carrier": "ONE"}),
            json.dumps({"carrier": "MSC", "count": 2, "date": "x"})]
    answers = [json.dumps({"carrier": "MSC"}), "not json", json.dumps({"carrier": "MSC", "count": 2, "date": None})]
    # fields differ per row, so field accuracy (a mean over fields) is not a mean over rows
    expected = extraction_scores(answers, refs)["field_accuracy"]
    assert expected == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert metric_sampler("field_accuracy", answers, refs)(np.ones((1, 3)))[0] == pytest.approx(expected)

    gen_refs, gen_answers = ["the cat sat down", "the cat"], ["the cat sat", "a dog"]
    assert metric_sampler("rouge_l", gen_answers, gen_refs)(np.ones((1, 2)))[0] == \
        pytest.approx(generation_scores(gen_answers, gen_refs)["rouge_l"])


# ------------------------------------------------------------------------------- degenerate models


def test_collapsed_classifier_flag_and_when_it_stays_quiet():
    actual = ["pos"] * 15 + ["neg"] * 5
    flags = classifier_flags(["pos"] * 20, actual, LABELS)
    assert [f["name"] for f in flags] == ["collapsed"]
    assert "'pos' for 20 of 20 test rows (100%; it is 75% of the references), recall 0 on 'neg'" in flags[0]["message"]
    # a perfect model on a test set that is 97% one class is not collapsed; one that misses the rest is
    skewed = ["pos"] * 97 + ["neg"] * 3
    assert classifier_flags(skewed, skewed, LABELS) == []
    assert classifier_flags(["pos"] * 100, skewed, LABELS)[0]["name"] == "collapsed"
    assert classifier_flags(["pos"] * 14 + ["neg"] * 6, actual, LABELS) == []


def test_generator_flags():
    refs = [f"reference {i}" for i in range(6)]
    same = generator_flags(["Sure!"] * 4 + ["a", "b"], refs, None, 96)
    assert [f["name"] for f in same] == ["collapsed"] and "4 of 6 answers are the same text" in same[0]["message"]
    looping = ["the port is the port is the port is the port is"] * 3 + [f"answer {i}" for i in range(3)]
    assert [f["name"] for f in generator_flags(looping, refs, None, 96)] == ["collapsed", "repeats"]
    distinct_loops = [f"go {i} go {i} go {i} go {i} go {i}" for i in range(6)]
    assert [f["name"] for f in generator_flags(distinct_loops, refs, None, 96)] == ["repeats"]
    healthy = [f"a different answer number {i}" for i in range(6)]
    assert generator_flags(healthy, refs, [10] * 6, 96) == []
    never = generator_flags(healthy, refs, [96, 95, 90, 87, 10, 12], 96)  # 87 and more: 90% of the budget
    assert [f["name"] for f in never] == ["never_stops"]
    assert "4 of 6 answers ran to eval.max_new_tokens (96 tokens)" in never[0]["message"]
    # the same answer is right when the references are the same too
    assert generator_flags(['{"a": 1}'] * 6, ['{ "a":1 }'] * 6, None, 96) == []


# ------------------------------------------------------------------------------- verdicts


def _run_parts(references: list[str], train_labels: list[str]):
    prepared = PreparedData("classification", None, LABELS, {"test": len(references)}, Path("unused"))
    recipe = load_recipe({"name": "t", "model": {"name": "minilm-l6"}, "data": {"dataset": "bbc-news"},
                          "eval": {"resamples": 1000}})
    rows = [{"text": f"row {i}", "label": label} for i, label in enumerate(references)]
    train = [{"text": f"train {i}", "label": label} for i, label in enumerate(train_labels)]
    return rows, train, prepared, recipe


def _out(predicted: list[str], references: list[str]) -> dict:
    return {"scores": classification_scores(predicted, references, LABELS), "answers": predicted}


def test_a_classifier_that_learned_only_the_prior_is_a_no_with_the_collapse_flag():
    references = ["pos"] * 15 + ["neg"] * 5
    rows, train, prepared, recipe = _run_parts(references, ["pos"] * 16 + ["neg"] * 4)
    base = ["neg"] * 20  # an untrained head answering the minority class: accuracy 0.25
    out = assess(rows, train, prepared, recipe, _out(base, references), _out(["pos"] * 20, references), {}, None)
    v = out["verdict"]
    assert v["answer"] == "no" and [f["name"] for f in v["flags"]] == ["collapsed"]
    assert set(out["baselines"]) == {"majority_class", "stratified_random"}
    majority = next(c for c in v["intervals"] if c["against"] == "majority_class" and c["metric"] == "accuracy")
    assert majority["tuned"] == majority["other"] == 0.75 and majority["ci95"] == [0.0, 0.0]
    assert majority["outcome"] == "not better" and majority["deciding"] and majority["mcnemar"]["p_value"] == 1.0
    versus_base = next(c for c in v["intervals"] if c["against"] == "base" and c["metric"] == "accuracy")
    assert versus_base["difference"] == pytest.approx(0.5) and versus_base["outcome"] == "better"  # only the base
    assert versus_base["mcnemar"]["p_value"] == pytest.approx(2 * 21700 / 2**20)  # 15 vs 5 discordant rows
    assert {c["metric"] for c in v["intervals"]} == {"accuracy", "macro_f1"}
    assert v["headline"] == {"metric": "accuracy", "tuned": 0.75, "base": 0.25, "best_baseline": "majority_class",
                             "baseline": 0.75}
    line = verdict_line(v)
    assert line.startswith("No — collapsed: predicts 'pos'") and "majority class 0.7500: not better" in line
    assert "learned the class prior" in v["try"]


def test_a_classifier_that_beats_the_prior_clearly_is_a_yes():
    references = ["pos"] * 150 + ["neg"] * 50
    tuned = ["pos"] * 145 + ["neg"] * 5 + ["neg"] * 45 + ["pos"] * 5  # 190 of 200 right
    base = [random.Random(i).choice(LABELS) for i in range(200)]
    rows, train, prepared, recipe = _run_parts(references, ["pos"] * 75 + ["neg"] * 25)
    v = assess(rows, train, prepared, recipe, _out(base, references), _out(tuned, references), {}, None)["verdict"]
    assert v["answer"] == "yes" and v["flags"] == [] and v["try"] == ""
    deciding = [c for c in v["intervals"] if c.get("deciding")]
    assert [c["against"] for c in deciding] == ["majority_class", "base"]
    assert all(c["outcome"] == "better" and c["ci95"][0] > 0 for c in deciding)
    assert deciding[0]["mcnemar"]["tuned_only_right"] == 45 and deciding[0]["mcnemar"]["other_only_right"] == 5


def test_a_small_lead_within_the_noise_is_not_distinguishable():
    references = ["pos"] * 15 + ["neg"] * 5
    tuned = ["pos"] * 14 + ["neg"] + ["neg"] * 2 + ["pos"] * 3  # 16 of 20: +0.05 over the majority class
    rows, train, prepared, recipe = _run_parts(references, ["pos"] * 15 + ["neg"] * 5)
    v = assess(rows, train, prepared, recipe, _out(["neg"] * 20, references), _out(tuned, references), {},
               None)["verdict"]
    majority = next(c for c in v["intervals"] if c["against"] == "majority_class" and c["metric"] == "accuracy")
    assert majority["difference"] == pytest.approx(0.05) and majority["ci95"][0] <= 0 < majority["ci95"][1]
    assert v["answer"] == "not distinguishable" and "more test rows" in v["try"]


def test_forgetting_past_the_warning_levels_is_named_as_a_trade_off():
    section = {"sets": {"bbc-news": {"kind": "text"}, "chatterbot": {"kind": "chat"}},
               "deltas": {"bbc-news": {"perplexity": {"base": 10.0, "tuned": 12.9, "delta": 0.29, "relative": True}},
                          "chatterbot": {"token_accuracy": {"base": 0.50, "tuned": 0.49, "delta": -0.01,
                                                            "relative": False}}}}
    warnings = forgetting_warnings(section, WarnForgettingSpec())
    assert [(w["set"], w["field"]) for w in warnings] == [("bbc-news", "eval.warn_forgetting.general_ppl_increase")]
    assert "bbc-news perplexity +29% (base 10 → tuned 12.9; warns past +10%)" == warnings[0]["message"]
    section["deltas"]["chatterbot"]["token_accuracy"].update(tuned=0.47, delta=-0.03)
    assert [w["metric"] for w in forgetting_warnings(section, WarnForgettingSpec())] == ["perplexity", "token_accuracy"]
    assert forgetting_warnings(section, WarnForgettingSpec(general_ppl_increase=0.5, chat_accuracy_drop=None)) == []

    references = ["pos"] * 30 + ["neg"] * 30
    v = judge("accuracy", references, LABELS, references, ["neg"] * 60, [], {}, {}, [], warnings, 1000, 0)
    assert v["answer"] == "yes" and "trade-off: bbc-news perplexity +29%" in v["why"]
    assert "data.mix" in v["try"] and "recipes/quickstart-replay.yaml" in v["try"]


def test_fail_on_gates_raise_after_the_verdict():
    references = ["pos"] * 15 + ["neg"] * 5
    rows, train, prepared, recipe = _run_parts(references, references)
    collapsed = assess(rows, train, prepared, recipe, _out(["neg"] * 20, references), _out(["pos"] * 20, references),
                       {}, None)["verdict"]
    raise_if_gated(collapsed, [])  # no gate: nothing raised
    with pytest.raises(VerdictGateError, match=r"eval.fail_on collapsed: the tuned model is degenerate \(collapsed: "
                                               "predicts 'pos'") as info:
        raise_if_gated(collapsed, ["collapsed"], {"verdict": collapsed})
    assert info.value.results == {"verdict": collapsed}
    with pytest.raises(VerdictGateError, match="eval.fail_on not_better: the verdict is 'no'"):
        raise_if_gated(collapsed, ["not_better"])


def test_extraction_verdict_with_token_counts_from_the_tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rows = [{"input": f"Book {i} x 40HC to Rotterdam",
             "output": json.dumps({"count": i, "port": "NLRTM", "date": None})} for i in range(30)]
    references = [r["output"] for r in rows]
    prepared = PreparedData("extraction", "Extract the booking.", None, {"test": 30}, Path("unused"))
    recipe = load_recipe({"name": "t", "model": {"name": "smollm2-135m"}, "data": {"dataset": "shipping-emails"},
                          "eval": {"resamples": 1000, "max_new_tokens": 24}})
    base = {"scores": extraction_scores(["{}"] * 30, references), "answers": ["{}"] * 30}
    right = {"scores": extraction_scores(references, references), "answers": references, "references": references}
    out = assess(rows, [], prepared, recipe, base, right, {}, tokenizer)
    assert set(out["baselines"]) == {"empty_object", "null_fields"}
    assert out["baselines"]["null_fields"]["scores"]["per_field"] == {"count": 0.0, "port": 0.0, "date": 1.0}
    assert out["verdict"]["answer"] == "yes" and out["verdict"]["flags"] == []

    # one long answer for every input, cut off by the 24-token budget
    stuck = '{"count": 1, "port": "NLRTM", "date": "2026-01-01", "notes": "a long note that never ends and goes on'
    stuck_out = {"scores": extraction_scores([stuck] * 30, references), "answers": [stuck] * 30,
                 "references": references}
    v = assess(rows, [], prepared, recipe, base, stuck_out, {}, tokenizer)["verdict"]
    assert v["answer"] == "no" and [f["name"] for f in v["flags"]] == ["collapsed", "never_stops"]
    assert "field_accuracy" in v["why"] and "eval.max_new_tokens" in v["try"]


# ------------------------------------------------------------------------------- end to end


def test_tiny_bert_that_learned_only_the_prior(tiny_bert_dir, tmp_path):
    """Labels independent of the text, 85% 'pos' in train and test: training can only learn the prior.
    `peftkit eval` must say no, flag the collapse, and with eval.fail_on [collapsed] exit 1."""
    rng = random.Random(0)
    words = "ship port crane harbour vessel cargo tide anchor berth dock".split()

    def write(name: str, rows: int) -> Path:
        lines = ["text,label"] + [f"{' '.join(rng.choices(words, k=6))},{'pos' if rng.random() < 0.85 else 'neg'}"
                                  for _ in range(rows)]
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        return tmp_path / name

    write("train.csv", 48), write("test.csv", 40)
    recipe = tmp_path / "prior.yaml"
    recipe.write_text(json.dumps({
        "name": "prior", "model": {"name": str(tiny_bert_dir)},
        "data": {"files": {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")},
                 "task": "classification", "split": {"val": 0.0}, "dedup": {"near": False}},
        "method": {"kind": "lora", "r": 4, "dropout": 0.0},
        "train": {"max_steps": 3, "batch_size": 16, "lr": 0.05, "warmup_ratio": 0.0},
        "eval": {"resamples": 500},
        "output": {"runs_dir": str(tmp_path / "runs"), "run_id": "r", "mlflow": False}}), encoding="utf-8")
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(recipe)], catch_exceptions=False)
    assert trained.exit_code == 0, trained.output
    run = tmp_path / "runs" / "r"
    evaluated = runner.invoke(app, ["eval", str(run)], catch_exceptions=False)
    assert evaluated.exit_code == 0, evaluated.output

    metrics = json.loads((run / "metrics.json").read_text())
    v = metrics["verdict"]
    tuned = metrics["tuned"]
    assert v["answer"] == "no" and [f["name"] for f in v["flags"]] == ["collapsed"], v["why"]
    assert min(c["recall"] for c in tuned["per_class"].values()) == 0.0
    assert tuned["accuracy"] <= metrics["baselines"]["majority_class"]["scores"]["accuracy"]
    assert "did it work? No — collapsed" in " ".join(evaluated.output.split())
    assert "flag collapsed:" in evaluated.output

    page = (run / "report.html").read_text()
    assert 'id="verdict-table"' in page and "majority class" in page and "recall-zero" in page
    assert "No — collapsed" in page

    listing = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "runs"), "--json"], catch_exceptions=False)
    assert json.loads(listing.output)[0]["verdict"]["answer"] == "no"

    gated = runner.invoke(app, ["eval", str(run), "--set", "eval.fail_on=[collapsed]"])
    assert gated.exit_code == 1 and isinstance(gated.exception, VerdictGateError)
    assert json.loads((run / "metrics.json").read_text())["verdict"]["answer"] == "no"  # written before it failed
