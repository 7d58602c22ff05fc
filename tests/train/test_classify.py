"""Class weights for classification: the weights from the training labels, the loss they give, and a run
that trains with them and says so in train.log."""

import json
import math

import pytest
import torch

from peftkit.errors import RecipeError
from peftkit.train.classify import class_weights, weighted_cross_entropy

LABELS = ["neg", "neu", "pos"]


def test_inverse_frequency_weighs_every_class_the_same_in_total():
    train = ["pos"] * 60 + ["neg"] * 30 + ["neu"] * 10
    weights, note = class_weights("inverse", train, LABELS)
    by_label = dict(zip(LABELS, weights))
    assert by_label["neu"] == pytest.approx(100 / (3 * 10))
    # each class's examples carry the same total weight, and the mean weight per example is 1
    totals = {label: by_label[label] * train.count(label) for label in LABELS}
    assert max(totals.values()) == pytest.approx(min(totals.values()))
    assert sum(totals.values()) / len(train) == pytest.approx(1.0)
    assert "inverse frequency" in note and "neu 3.33 (10)" in note


def test_auto_weighs_only_an_imbalanced_split():
    balanced = ["pos"] * 11 + ["neg"] * 10 + ["neu"] * 9
    weights, note = class_weights("auto", balanced, LABELS)
    assert weights is None and "auto: commonest/rarest class 1.22x < 1.5x" in note
    imbalanced = ["pos"] * 30 + ["neg"] * 10 + ["neu"] * 10
    weights, note = class_weights("auto", imbalanced, LABELS)
    assert weights is not None and weights[LABELS.index("pos")] < 1 < weights[LABELS.index("neu")]
    assert "3.00x >= 1.5x" in note


def test_off_and_given_weights():
    assert class_weights("off", ["pos", "neg"], LABELS)[0] is None
    weights, note = class_weights({"neg": 2, "neu": 1, "pos": 0.5}, ["pos"], LABELS)
    assert weights == [2.0, 1.0, 0.5] and "given" in note
    with pytest.raises(RecipeError, match="missing: neu.*not labels of the data: positive"):
        class_weights({"neg": 1, "pos": 1, "positive": 1}, ["pos"], LABELS)


def test_weighted_loss_with_accumulation_equals_the_weighted_mean():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 2, 2, 1, 2, 0])
    weights = [2.0, 0.5, 1.0]
    loss = weighted_cross_entropy(weights)
    w = torch.tensor(weights)[labels]
    per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    # one micro-batch: a weighted mean (what torch's weight= mean does)
    assert loss({"logits": logits}, labels).item() == pytest.approx(((w * per_example).sum() / w.sum()).item())
    # two micro-batches of an accumulated step: each sums its share and divides by the step's example count
    halves = [loss({"logits": logits[i:i + 3]}, labels[i:i + 3], num_items_in_batch=6) for i in (0, 3)]
    assert sum(h.item() for h in halves) == pytest.approx(((w * per_example).sum() / 6).item())
    assert not math.isclose(sum(h.item() for h in halves), per_example.mean().item(), rel_tol=1e-3)


def test_a_run_with_auto_class_weights_says_which_it_used(tiny_bert_dir, tmp_path):
    from peftkit.train.run import train

    rows = [{"text": f"great product number {i}", "label": "pos"} for i in range(24)]
    rows += [{"text": f"awful product number {i}", "label": "neg"} for i in range(8)]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"name": "weights", "model": {"name": str(tiny_bert_dir)},
              "data": {"dataset": str(data), "task": "classification", "split": {"val": 0.0, "test": 0.2}},
              "train": {"max_steps": 2, "class_weights": "auto"},
              "output": {"runs_dir": str(tmp_path / "runs"), "mlflow": False}}
    result = train(recipe)
    log = (result.run_dir / "train.log").read_text()
    assert "class weights: inverse frequency (auto: commonest/rarest class" in log
    assert json.loads((result.run_dir / "metrics.json").read_text())["train"]["steps"] == 2
