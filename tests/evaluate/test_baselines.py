"""Trivial baselines: answers made without looking at the inputs, scored by the metrics.py functions."""

import json
from collections import Counter

import pytest

from peftkit.evaluate.baselines import (classification_baselines, copy_input_baseline, extraction_baselines,
                                        label_frequencies, task_baselines)
from peftkit.evaluate.metrics import classification_scores, extraction_scores

LABELS = ["neg", "neu", "pos"]


def test_majority_class_comes_from_the_training_split_not_the_test_rows():
    train = [{"text": f"t{i}", "label": "pos"} for i in range(8)] + [{"text": "u", "label": "neg"}] * 2
    train.append({"messages": [{"role": "user", "content": "hi"}]})  # a replayed chat row has no label
    test_labels = ["neg", "neg", "neg", "pos"]
    majority, stratified = classification_baselines(test_labels, train, LABELS, seed=0)
    assert label_frequencies(train, LABELS) == {"neg": 2, "neu": 0, "pos": 8}
    assert majority.name == "majority_class" and majority.answers == ["pos"] * 4
    assert majority.scores == classification_scores(["pos"] * 4, test_labels, LABELS)
    assert majority.scores["accuracy"] == pytest.approx(0.25)  # the test rows are mostly neg: the prior is wrong here
    assert "'pos'" in majority.description and "80%" in majority.description
    assert stratified.scores == classification_scores(stratified.answers, test_labels, LABELS)


def test_stratified_random_follows_the_training_frequencies_and_is_seeded():
    train = [{"text": "a", "label": "pos"}] * 75 + [{"text": "b", "label": "neg"}] * 25
    references = ["pos"] * 4000
    _, first = classification_baselines(references, train, LABELS, seed=3)
    _, again = classification_baselines(references, train, LABELS, seed=3)
    _, other = classification_baselines(references, train, LABELS, seed=4)
    counts = Counter(first.answers)
    assert first.answers == again.answers and first.answers != other.answers
    assert counts["neu"] == 0  # never seen in training: never drawn
    assert counts["pos"] / 4000 == pytest.approx(0.75, abs=0.03)
    assert first.scores["accuracy"] == pytest.approx(counts["pos"] / 4000)


def test_extraction_baselines_hand_computed():
    refs = [json.dumps({"carrier": "MSC", "date": None}), json.dumps({"carrier": "ONE", "date": "2026-01-02"}),
            json.dumps({"carrier": "MSC", "date": None, "count": 2})]
    empty, nulls = extraction_baselines(refs)
    assert empty.answers == ["{}"] * 3 and empty.scores["field_accuracy"] == 0.0
    assert json.loads(nulls.answers[0]) == {"carrier": None, "date": None, "count": None}
    # carrier never null: 0/3; date null in 2 of 3 rows; count (one row) is 2, not null: 0/1
    assert nulls.scores["per_field"] == {"carrier": 0.0, "date": pytest.approx(2 / 3), "count": 0.0}
    assert nulls.scores == extraction_scores(nulls.answers, refs)


def test_copy_input_answers_with_the_last_user_turn():
    rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hello world"},
                          {"role": "assistant", "content": "say hello world"}]},
            {"messages": [{"role": "user", "content": "what is two plus two"},
                          {"role": "assistant", "content": "four"}]}]
    baseline = copy_input_baseline(rows, ["say hello world", "four"], "chat", None)
    assert baseline.answers == ["say hello world", "what is two plus two"]
    assert baseline.scores["rouge_l"] == pytest.approx(0.5)  # 1.0 on the echo, 0 on the answer
    completion = copy_input_baseline([{"prompt": "Once upon", "completion": " a time"}], [" a time"], "completion",
                                     None)
    assert completion.answers == ["Once upon"] and completion.scores["rouge_l"] == 0.0


def test_each_headline_metric_gets_its_baselines():
    rows = [{"text": "x", "label": "pos"}]
    assert [b.name for b in task_baselines("accuracy", rows, ["pos"], rows, "classification", None, LABELS, 0)] == \
        ["majority_class", "stratified_random"]
    refs = [json.dumps({"a": 1})]
    extraction = task_baselines("field_accuracy", [{"input": "i", "output": refs[0]}], refs, [], "extraction", None,
                                None, 0)
    assert [b.name for b in extraction] == ["empty_object", "null_fields"]
    assert task_baselines("loss", rows, ["pos"], rows, "chat", None, None, 0) == []
