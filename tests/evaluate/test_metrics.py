import json

import pytest

from peftkit.evaluate.metrics import classification_scores, extraction_scores, parse_json_object

REF = json.dumps({"carrier": "MSC", "origin": "CNSHA", "count": 2, "date": None})


def test_parse_json_object_ignores_trailing_text_and_rejects_non_objects():
    assert parse_json_object('  {"a": 1} <|im_end|> junk') == {"a": 1}
    assert parse_json_object("[1, 2]") is None
    assert parse_json_object('{"a": ') is None
    assert parse_json_object("no json here") is None


def test_extraction_scores_hand_computed():
    preds = [
        REF,  # all right
        json.dumps({"carrier": "MSC", "origin": "NLRTM", "count": 2, "date": None}),  # 3/4
        json.dumps({"carrier": "MSC", "origin": "CNSHA", "count": "2"}),  # count wrong type, date missing: 2/4
        "not json",  # 0/4
    ]
    s = extraction_scores(preds, [REF] * 4)
    assert s["json_valid"] == pytest.approx(0.75)
    assert s["exact_match"] == pytest.approx(0.25)
    assert s["per_field"] == {"carrier": 0.75, "origin": 0.5, "count": 0.5, "date": 0.5}
    assert s["field_accuracy"] == pytest.approx((0.75 + 0.5 + 0.5 + 0.5) / 4)


def test_extra_keys_break_exact_match_only():
    pred = json.dumps({**json.loads(REF), "extra": 1})
    s = extraction_scores([pred], [REF])
    assert s["field_accuracy"] == 1.0 and s["exact_match"] == 0.0


def test_classification_scores_hand_computed():
    actual = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", "c", "c"]
    s = classification_scores(predicted, actual, ["a", "b", "c"])
    assert s["accuracy"] == pytest.approx(4 / 6)
    # a: p=1, r=2/3, f1=0.8; b: p=1/2, r=1/2, f1=0.5; c: p=1/2, r=1, f1=2/3
    assert s["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert s["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert s["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert s["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        extraction_scores(["{}"], [REF, REF])


def test_generation_scores_hand_computed():
    from peftkit.evaluate.metrics import generation_scores

    # "the cat sat" vs "the cat sat down": LCS 3, P = 3/3, R = 3/4, F = 2PR/(P+R) = 6/7.
    # "a dog" vs "the cat": LCS 0 → 0.  Identical text up to whitespace → 1 and an exact match.
    s = generation_scores(["the cat sat", "a dog", " hello   world "], ["the cat sat down", "the cat", "hello world"])
    assert s["rouge_l"] == pytest.approx((6 / 7 + 0 + 1) / 3)
    assert s["text_exact_match"] == pytest.approx(1 / 3)
    assert s["examples"] == 3
