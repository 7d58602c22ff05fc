"""Edge cases met when users tried their own files: an unpaired UTF-16 surrogate, a file of blank
lines, prompt and completion with nothing between them, and the label balance of classification data."""

import json

import pytest

from peftkit.data.prepare import prepare_data, read_split, summary_line
from peftkit.data.template import check_templates, stop_token_ids
from peftkit.errors import DataError
from peftkit.recipe import DataSpec

NO_SPLIT = {"val": 0, "test": 0}


@pytest.fixture
def tok(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def test_unpaired_surrogate_is_a_row_problem_naming_the_line(tmp_path, tok, tiny_llama_dir):
    lines = ['{"instruction": "Smile", "response": "here \\ud83d you go"}',  # json decodes a lone surrogate
             '{"instruction": "Wave", "response": "hi \\ud83d\\udc4b"}',     # a valid pair: one emoji
             '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\\udc4b"}]}']
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines[:2] + [json.dumps({"instruction": "Bow", "response": "ok"})]) + "\n")
    spec = DataSpec(dataset=str(path), split=NO_SPLIT)
    with pytest.raises(DataError) as info:
        prepare_data(spec, tmp_path / "out", tokenizer=tok, model_source=str(tiny_llama_dir))
    msg = str(info.value)
    assert msg.startswith("1 problems")
    assert "s.jsonl:1: response: text holds an unpaired UTF-16 surrogate (\\ud83d) at position 6" in msg
    spec.on_error = "skip"
    prepared = prepare_data(spec, tmp_path / "out", tokenizer=tok, model_source=str(tiny_llama_dir))
    assert prepared.counts["train"] == 2
    assert "hi 👋" in {r["messages"][1]["content"] for r in read_split(tmp_path / "out", "train")}
    [reject] = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert reject["record"]["response"] == "here \ud83d you go" and "surrogate" in reject["reason"]

    chat = tmp_path / "c.jsonl"
    chat.write_text(lines[2] + "\n")
    with pytest.raises(DataError, match=r"c.jsonl:1: messages\[1\].content: text holds an unpaired UTF-16 "
                                        r"surrogate \(\\udc4b\) at position 1"):
        prepare_data(DataSpec(dataset=str(chat), split=NO_SPLIT), tmp_path / "c")


@pytest.mark.parametrize("name", ["blank.jsonl", "blank.json", "blank.csv"])
def test_file_of_blank_lines_says_it_is_empty(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n  \n\r\n\n")
    with pytest.raises(DataError) as info:
        prepare_data(DataSpec(dataset=str(path)), tmp_path / "out")
    assert str(info.value) == f"{path}: the file is empty (only blank lines)"


def test_prompt_and_completion_with_nothing_between_says_what_to_add(tok, tiny_llama_dir):
    stops = stop_token_ids(tok, tiny_llama_dir)
    with pytest.raises(DataError) as info:
        check_templates({"train": [({"prompt": "hello", "completion": "world"}, "p.jsonl:4")]},
                        "completion", None, tok, stops)
    msg = str(info.value)
    assert msg.startswith("template check failed at p.jsonl:4 (train)")
    assert "'hello|world'" in msg and "start the completion with a space (' world')" in msg
    with pytest.raises(DataError) as info:
        check_templates({"train": [({"prompt": "hello ", "completion": "world"}, "p.jsonl:5")]},
                        "completion", None, tok, stops)
    msg = str(info.value)
    assert "The prompt ends with a space, which the tokenizer joins to the word after it ('hello |world'" in msg
    assert "move the space to the start of the completion (' world')" in msg
    long_prompt = "Finish the word in the story about the light"
    with pytest.raises(DataError, match=r"\('…tory about the light\|house keeper who wat…', \| marks"):
        check_templates({"train": [({"prompt": long_prompt, "completion": "house keeper who watched"}, "p:7")]},
                        "completion", None, tok, stops)
    # the fixes the messages advise pass the check
    for prompt, completion in (("hello", " world"), ("hello\n", "world")):
        check_templates({"train": [({"prompt": prompt, "completion": completion}, "p.jsonl:6")]},
                        "completion", None, tok, stops)


def test_classification_reports_label_distribution_and_majority_baseline(tmp_path):
    rows = [{"text": f"news story number {i} about things", "label": label}
            for i, label in enumerate(["sport"] * 12 + ["tech"] * 6 + ["arts"] * 2)]
    path = tmp_path / "l.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DataSpec(dataset=str(path), split={"val": 0, "test": 0.5}, dedup={"near": False})
    prepared = prepare_data(spec, tmp_path / "out")
    balance = prepared.manifest["label_balance"]
    assert balance["counts"] == {"train": {"arts": 1, "sport": 6, "tech": 3}, "val": {},
                                 "test": {"arts": 1, "sport": 6, "tech": 3}}
    assert balance["majority"] == {"label": "sport", "train": 0.6, "val": None, "test": 0.6}
    line = summary_line(prepared)
    assert "labels in train: sport 6 (60%), tech 3 (30%), arts 1 (10%)" in line
    assert "majority baseline 'sport': 60% of train, 60% of test" in line
