import json
from collections import Counter

import pytest

from peftkit.data.prepare import load_prepared, prepare_data, read_split
from peftkit.errors import DataError
from peftkit.recipe import DataSpec


def test_builtin_split_counts_manifest_and_determinism(tmp_path):
    spec = DataSpec(dataset="shipping-emails", size=100, split={"val": 0.1, "test": 0.2, "seed": 3})
    prepared = prepare_data(spec, tmp_path / "a")
    assert prepared.counts == {"train": 70, "val": 10, "test": 20}
    assert prepared.task == "extraction" and prepared.instruction
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 70 and len(manifest["splits"]["test"]["sha256"]) == 64
    again = prepare_data(spec, tmp_path / "b")
    assert read_split(again.data_dir, "train") == read_split(prepared.data_dir, "train")
    texts = [r["input"] for s in ("train", "val", "test") for r in read_split(prepared.data_dir, s)]
    assert len(set(texts)) == 100  # splits are disjoint
    assert load_prepared(tmp_path / "a").counts == prepared.counts


def test_classification_split_is_stratified(tmp_path):
    prepared = prepare_data(DataSpec(dataset="bbc-news", split={"val": 0.1, "test": 0.1}), tmp_path)
    test = Counter(r["label"] for r in read_split(tmp_path, "test"))
    assert prepared.labels == ["business", "entertainment", "politics", "sports", "tech"]
    # after 101 exact and 55 near duplicates of the 2,225 articles are removed before splitting
    assert test == {"business": 50, "entertainment": 36, "politics": 39, "sports": 49, "tech": 32}
    assert prepared.manifest["cleaning"]["exact_duplicates"] == 101


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_user_file_problems_name_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"text": "fine", "label": "a"},
        {"text": "", "label": "a"},
        "{not json",
        {"text": "no label"},
        {"text": 3, "label": None},
    ])
    with pytest.raises(DataError) as info:
        prepare_data(DataSpec(dataset=str(path), task="classification"), tmp_path / "out")
    msg = str(info.value)
    assert msg.startswith("5 problems in")
    assert "d.jsonl:2: text: empty text" in msg
    assert "d.jsonl:3: not valid JSON" in msg
    assert "d.jsonl:4: label: missing" in msg
    assert "d.jsonl:5: text: expected a string, found int" in msg
    assert "d.jsonl:5: label: null" in msg


def test_chat_problems(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"},
                      {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
    ])
    with pytest.raises(DataError) as info:
        prepare_data(DataSpec(dataset=str(path), task="chat"), tmp_path / "out")
    msg = str(info.value)
    assert "c.jsonl:1: messages[1].role: expected one of system, user, assistant, found 'bot'" in msg
    assert "c.jsonl:2: messages[1].role: a system message must come first" in msg
    assert "c.jsonl:3: messages[0].role: a chat must end with an assistant turn" in msg


def test_more_than_twenty_problems_are_counted(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [{"input": "x"}] * 25)
    with pytest.raises(DataError, match=r"… and 5 more problems"):
        prepare_data(DataSpec(dataset=str(path), task="extraction"), tmp_path / "out")


def test_valid_user_file_loads_with_bom(tmp_path):
    rows = [{"text": f"article {i}", "label": ["x", "y"][i % 2], "extra": 1} for i in range(20)]
    path = tmp_path / "ok.jsonl"
    path.write_text("\ufeff" + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    prepared = prepare_data(DataSpec(dataset=str(path), task="classification", split={"val": 0.1, "test": 0.1}), tmp_path / "o")
    assert sum(prepared.counts.values()) == 20 and prepared.labels == ["x", "y"]
    assert set(read_split(tmp_path / "o", "train")[0]) == {"text", "label"}


def test_user_file_task_is_detected_and_path_must_exist(tmp_path):
    with pytest.raises(DataError, match="neither a built-in dataset"):
        prepare_data(DataSpec(dataset=str(tmp_path / "missing.jsonl")), tmp_path / "o")
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"a {i}", "label": "b"} for i in range(5)])
    prepared = prepare_data(DataSpec(dataset=str(path), split={"val": 0, "test": 0}), tmp_path / "o")
    assert prepared.task == "classification"
    assert prepared.manifest["format"].startswith("format classification: fields text, label in 100%")
    with pytest.raises(DataError, match="data.task: .* holds classification records .* not chat"):
        prepare_data(DataSpec(dataset=str(path), task="chat"), tmp_path / "o")


def test_latin1_file_is_a_clear_error(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_bytes('{"text": "caf\xe9", "label": "a"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        prepare_data(DataSpec(dataset=str(path), task="classification"), tmp_path / "o")


def test_builtin_task_mismatch(tmp_path):
    with pytest.raises(DataError, match="is a classification dataset"):
        prepare_data(DataSpec(dataset="bbc-news", task="chat"), tmp_path)
