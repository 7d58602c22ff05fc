"""One test per tricky or malformed file in tests/data/files: the error names the right line and
field, and files that should load load with the right counts."""

import json
from pathlib import Path

import pytest

from peftkit.data.prepare import prepare_data, read_split
from peftkit.errors import DataError
from peftkit.recipe import DataSpec

FILES = Path(__file__).parent / "files"
NO_SPLIT = {"val": 0, "test": 0}


def prepare(tmp_path, name=None, **kw):
    kw.setdefault("split", NO_SPLIT)
    if name is not None:
        kw["dataset"] = str(FILES / name)
    return prepare_data(DataSpec(**kw), tmp_path / "out")


def error(tmp_path, name=None, **kw) -> str:
    with pytest.raises(DataError) as info:
        prepare(tmp_path, name, **kw)
    return str(info.value)


def rejects(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]


def test_bom_and_crlf_load_with_emoji_kept(tmp_path):
    prepared = prepare(tmp_path, "bom_crlf.jsonl")
    assert prepared.task == "classification" and prepared.counts["train"] == 4
    texts = [r["text"] for r in read_split(tmp_path / "out", "train")]
    assert "Great phone, love it 😀" in texts and not any("\r" in t or "\ufeff" in t for t in texts)
    assert prepared.manifest["inputs"][0]["kind"] == "jsonl" and len(prepared.manifest["inputs"][0]["sha256"]) == 64


def test_gzip_named_jsonl_is_a_clear_error(tmp_path):
    msg = error(tmp_path, "gzip_named.jsonl")
    assert "gzip_named.jsonl: the file is gzip-compressed but named .jsonl" in msg and "gzip_named.jsonl.gz" in msg


def test_jsonl_gz_instruction_records_become_chat(tmp_path):
    prepared = prepare(tmp_path, "instruction.jsonl.gz")
    assert prepared.task == "chat" and prepared.counts["train"] == 3
    assert prepared.manifest["format"].startswith("format instruction: fields instruction, response in 100%")
    users = {r["messages"][0]["content"] for r in read_split(tmp_path / "out", "train")}
    assert "Translate to French\n\ncat" in users and "Name a primary colour" in users


def test_latin1_names_the_line(tmp_path):
    msg = error(tmp_path, "latin1.jsonl")
    assert "latin1.jsonl:3: not UTF-8 (byte 0xe9 at column 14)" in msg and "Latin-1" in msg


def test_multiline_csv_rows_and_problems(tmp_path):
    cols = {"text": "review", "label": "sentiment"}
    msg = error(tmp_path, "multiline.csv", columns=cols)
    assert "multiline.csv row 4 (line 8): expected 2 fields (review, sentiment), found 1" in msg
    assert "multiline.csv row 5 (line 9): text (column 'review'): empty text" in msg
    assert msg.startswith("2 problems")
    prepared = prepare(tmp_path, "multiline.csv", columns=cols, on_error="skip")
    assert prepared.counts["train"] == 4  # 6 data rows, 2 rejected
    texts = {r["text"] for r in read_split(tmp_path / "out", "train")}
    assert 'Loved it.\nWould buy again, "really"' in texts and "Broke after\ntwo\nweeks" in texts
    assert [r["where"].split("/")[-1] for r in rejects(tmp_path)] == ["multiline.csv row 4 (line 8)",
                                                                      "multiline.csv row 5 (line 9)"]


def test_tsv_column_mapping_names_the_user_column(tmp_path):
    msg = error(tmp_path, "reviews.tsv", columns={"text": "review", "label": "sentiment"})
    assert "reviews.tsv row 2 (line 3): label (column 'sentiment'): empty" in msg
    msg = error(tmp_path, "reviews.tsv", columns={"text": "review", "label": "stars"})
    assert "data.columns" in msg and "no column label: stars" in msg and "sentiment" in msg


def test_json_array_elements_keep_their_line(tmp_path):
    msg = error(tmp_path, "array.json")
    assert msg.startswith("1 problems") and "array.json:6: response: expected a string, found int" in msg
    assert prepare(tmp_path, "array.json", on_error="skip").counts["train"] == 3


def test_broken_json_array_names_the_line(tmp_path):
    assert "broken_array.json:3: not valid JSON (Expecting value" in error(tmp_path, "broken_array.json")


def test_chat_problems_each_name_line_and_field(tmp_path):
    msg = error(tmp_path, "chat_problems.jsonl")
    assert msg.startswith("7 problems") and "(6 rows)" in msg  # line 2 has two
    for expected in [
        "chat_problems.jsonl:2: messages[1].role: expected one of system, user, assistant, found 'bot'",
        "chat_problems.jsonl:3: messages[2].role: a chat must end with an assistant turn",
        "chat_problems.jsonl:4: messages[1].content: an empty assistant turn",
        "chat_problems.jsonl:5: messages[1].role: a system message must come first",
        "chat_problems.jsonl:6: messages: expected a non-empty list",
        "chat_problems.jsonl:7: not valid JSON",
    ]:
        assert expected in msg
    assert "chat_problems.jsonl:1:" not in msg
    assert prepare(tmp_path, "chat_problems.jsonl", on_error="skip").counts["train"] == 1
    assert len(rejects(tmp_path)) == 6 and all(r["stage"] == "invalid" and r["reason"] for r in rejects(tmp_path))


def test_preference_pairs(tmp_path):
    msg = error(tmp_path, "preference.jsonl")
    assert "preference.jsonl:2: chosen: equal to rejected" in msg
    assert "preference.jsonl:3: rejected: missing" in msg
    assert "preference.jsonl:4: prompt: null" in msg
    prepared = prepare(tmp_path, "preference.jsonl", on_error="skip")
    assert prepared.task == "preference" and prepared.counts["train"] == 2
    assert set(read_split(tmp_path / "out", "train")[0]) == {"prompt", "chosen", "rejected"}


def test_completion_text_and_prompt_completion(tmp_path):
    assert "completion.jsonl:3: text: empty text" in error(tmp_path, "completion.jsonl")
    prepared = prepare(tmp_path, "completion.jsonl", on_error="skip")
    assert prepared.task == "completion" and prepared.counts["train"] == 2
    rows = read_split(tmp_path / "out", "train")
    assert {"prompt": "", "completion": "Once upon a time there was a tiny model."} in rows


def test_labels_null_bool_and_control_characters(tmp_path):
    msg = error(tmp_path, "labels.jsonl")
    assert "labels.jsonl:2: label: null" in msg and "labels.jsonl:3: label: expected a string or integer, found bool" in msg
    prepare(tmp_path, "labels.jsonl", on_error="skip")
    texts = [r["text"] for r in read_split(tmp_path / "out", "train")]
    assert "bell and tab\tand emoji 👍🏽" in texts  # BEL stripped, tab and emoji (with skin tone) kept


def test_fixed_splits_and_a_val_label_train_lacks(tmp_path):
    files = {"train": str(FILES / "split_train.jsonl"), "val": str(FILES / "split_val.jsonl")}
    msg = error(tmp_path, files=files, split={"val": 0.1, "test": 0.5})
    assert "split_val.jsonl:2: label: 'c' does not occur in train (train labels: a, b)" in msg
    prepared = prepare(tmp_path, files=files, split={"val": 0.1, "test": 0.5}, on_error="skip")
    assert prepared.counts == {"train": 2, "val": 1, "test": 2}  # val kept as given (less the bad row), test carved
    assert [prepared.manifest["splits"][s]["fixed"] for s in ("train", "val", "test")] == [True, True, False]
    assert [r["stage"] for r in rejects(tmp_path)] == ["unseen_label"]


@pytest.mark.parametrize("name, expected", [
    ("unknown_format.xlsx", "unknown data format '.xlsx'"),
    ("not_a_dataset", "not one written by `datasets` save_to_disk"),
    ("missing.jsonl", "neither a built-in dataset"),
])
def test_not_what_the_name_says(tmp_path, name, expected):
    assert expected in error(tmp_path, name)


def test_parquet_and_datasets_folder_load(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    rows = [{"prompt": f"q{i}", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    assert prepare_data(DataSpec(dataset=str(tmp_path / "pairs.parquet"), split=NO_SPLIT), tmp_path / "p").counts["train"] == 5
    Dataset.from_list(rows[:4]).save_to_disk(str(tmp_path / "saved"))
    prepared = prepare_data(DataSpec(dataset=str(tmp_path / "saved"), split=NO_SPLIT), tmp_path / "d")
    assert prepared.counts["train"] == 4 and prepared.manifest["inputs"][0]["kind"] == "datasets folder"
    (tmp_path / "fake.parquet").write_text("a,b\n")
    with pytest.raises(DataError, match="fake.parquet: named .parquet but it is not a Parquet file"):
        prepare_data(DataSpec(dataset=str(tmp_path / "fake.parquet")), tmp_path / "f")
