"""Public data sets' field names without a column mapping (Alpaca, Dolly), and a column mapping that
must not let a row's own field of the mapped name through in place of the mapped column."""

import json

import pytest

from peftkit.data.prepare import prepare_data, read_split
from peftkit.errors import DataError
from peftkit.recipe import DataSpec

NO_SPLIT = {"val": 0, "test": 0}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def rejects(out) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


ALPACA = [
    {"instruction": "Translate to French", "input": "cat", "output": "chat"},
    {"instruction": "Name a primary colour", "input": "", "output": "Red"},
    {"instruction": "Add the numbers", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hello", "input": "", "output": "Hello!"},
]

DOLLY = [
    {"instruction": "Who wrote it?", "context": "Hamlet is a play by Shakespeare.", "response": "Shakespeare",
     "category": "closed_qa"},
    {"instruction": "Give a fruit", "context": "", "response": "An apple", "category": "brainstorming"},
    {"instruction": "How long is it?", "context": "The bridge is 2 km long.", "response": "2 km",
     "category": "closed_qa"},
]


def test_alpaca_fields_are_instruction_records(tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    prepared = prepare_data(DataSpec(dataset=path, split=NO_SPLIT), tmp_path / "out")
    assert prepared.task == "chat" and prepared.counts["train"] == 4
    assert prepared.manifest["format"].startswith("format instruction (Alpaca fields instruction/input/output")
    chats = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in read_split(tmp_path / "out", "train")}
    assert chats["Translate to French\n\ncat"] == "chat" and chats["Name a primary colour"] == "Red"


def test_alpaca_with_the_format_given_and_a_missing_output_names_the_file_field(tmp_path):
    rows = ALPACA + [{"instruction": "Count to three", "input": ""}]
    path = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    with pytest.raises(DataError) as info:
        prepare_data(DataSpec(dataset=path, format="instruction", split=NO_SPLIT), tmp_path / "out")
    msg = str(info.value)
    assert msg.startswith("1 problems") and "alpaca.jsonl:5: output: missing (expected a non-empty string)" in msg
    prepared = prepare_data(DataSpec(dataset=path, format="instruction", task="extraction", split=NO_SPLIT,
                                     on_error="skip"), tmp_path / "out")
    assert prepared.counts["train"] == 4 and "Alpaca fields instruction/input/output" in prepared.manifest["format"]
    assert {"input": "Add the numbers\n\n2 and 3", "output": "5"} in read_split(tmp_path / "out", "train")


def test_dolly_context_plays_the_role_of_input(tmp_path):
    path = write_jsonl(tmp_path / "dolly.jsonl", DOLLY)
    prepared = prepare_data(DataSpec(dataset=path, task="extraction", split=NO_SPLIT), tmp_path / "out")
    why = prepared.manifest["format"]
    assert why.startswith("format instruction (Dolly fields instruction/context/response") and "category" in why
    train = read_split(tmp_path / "out", "train")
    assert {"input": "Who wrote it?\n\nHamlet is a play by Shakespeare.", "output": "Shakespeare"} in train
    assert {"input": "Give a fruit", "output": "An apple"} in train
    path = write_jsonl(tmp_path / "dolly.jsonl", DOLLY + [{"instruction": "Say hi", "input": "x", "response": "hi"}])
    prepared = prepare_data(DataSpec(dataset=path, on_error="skip", split=NO_SPLIT), tmp_path / "out")
    assert prepared.counts["train"] == 3
    # `input` is not listed as ignored: a row that has it instead of `context` is a problem
    assert prepared.manifest["format"].endswith("other fields ignored: category")
    [reject] = rejects(tmp_path / "out")
    assert reject["where"].endswith("dolly.jsonl:4") and reject["reason"] == (
        "context: missing (Dolly fields instruction/context/response: context is read as input); "
        "the row has an `input` field")


def test_convention_row_with_our_field_instead_of_theirs_is_a_problem(tmp_path):
    rows = ALPACA + [{"instruction": "Say bye", "input": "", "response": "Bye"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(DataError, match=r"mixed.jsonl:5: output: missing \(Alpaca fields instruction/input/output"
                                        r".*\); the row has a `response` field"):
        prepare_data(DataSpec(dataset=path, split=NO_SPLIT), tmp_path / "out")


def test_mapped_column_missing_but_field_present_is_a_problem_not_taken(tmp_path):
    rows = [{"instruction": f"Question {i}", "output": f"Answer {i}"} for i in range(3)]
    rows.insert(1, {"instruction": "Sneaky", "response": "taken without output"})
    path = write_jsonl(tmp_path / "mapped.jsonl", rows)
    spec = DataSpec(dataset=path, columns={"response": "output"}, split=NO_SPLIT)
    with pytest.raises(DataError) as info:
        prepare_data(spec, tmp_path / "out")
    assert ("mapped.jsonl:2: output: missing (data.columns maps response to it); the row has a `response` field"
            in str(info.value))
    spec.on_error = "skip"
    prepared = prepare_data(spec, tmp_path / "out")
    assert prepared.counts["train"] == 3
    assert not any("Sneaky" in m["content"] for r in read_split(tmp_path / "out", "train") for m in r["messages"])
    [reject] = rejects(tmp_path / "out")
    assert reject["where"].endswith("mapped.jsonl:2") and reject["record"] == rows[1]
