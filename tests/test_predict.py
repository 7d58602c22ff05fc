"""`predict()` and `peftkit predict` on tiny runs trained for real: a prediction equals the tuned answer
`peftkit eval` recorded for the same input; classification gives every label a probability; bad rows
are errors naming the line and field."""

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.errors import DataError
from peftkit.evaluate.run import evaluate
from peftkit.predict import predict, read_inputs
from peftkit.train.run import train

QUIET = Console(quiet=True)


def trained_run(recipe: str, model_dir, runs_dir, sets: list[str]):
    """A tiny run trained two steps and evaluated (eval_predictions.jsonl holds base and tuned answers)."""
    # lr 0.1: two steps move the tiny random model's greedy answers away from the base's, input by input
    sets = [f"model.name={model_dir}", "train.max_steps=2", "train.lr=0.1", f"output.runs_dir={runs_dir}",
            "output.run_id=r", "output.mlflow=false", "eval.general.enabled=false", *sets]
    run = train(recipe, sets, console=QUIET).run_dir
    evaluate(run, console=QUIET, gate=False, report=False)
    return run


@pytest.fixture(scope="module")
def extraction_run(tiny_llama_dir, tmp_path_factory):
    # eval.batch_size 3 over 4 examples: two batches of different sizes, which predict must repeat; split seed 1
    # gives test emails on which the two-step tiny model answers differently
    return trained_run("quickstart", tiny_llama_dir, tmp_path_factory.mktemp("runs"),
                       ["data.size=24", "data.split.val=0.05", "data.split.test=0.2", "eval.max_examples=4", "eval.batch_size=3",
                       "eval.max_new_tokens=8", "data.split.seed=1"])


@pytest.fixture(scope="module")
def classification_run(tiny_bert_dir, tmp_path_factory):
    return trained_run("bbc-news-lora", tiny_bert_dir, tmp_path_factory.mktemp("runs"), ["data.size=60"])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_prediction_equals_the_tuned_answer_eval_recorded(extraction_run, tmp_path):
    recorded = read_jsonl(extraction_run / "eval_predictions.jsonl")
    assert len(recorded) == 4
    # the adapter changes the answers, and they differ between inputs: predicting with the base, or rows out
    # of order, would fail the comparison below
    assert any(r["base"] != r["tuned"] for r in recorded)
    assert len({r["tuned"] for r in recorded}) > 1
    out = tmp_path / "predictions.jsonl"
    result = predict(extraction_run, extraction_run / "data" / "test.jsonl", out, console=QUIET, limit=4)
    written = read_jsonl(out)
    assert result.rows == len(written) == 4 and result.task == "extraction"
    assert [w["prediction"] for w in written] == [r["tuned"] for r in recorded]
    # each row as given (input and reference output) plus the prediction
    assert [{k: w[k] for k in ("input", "output")} for w in written] == [{k: r[k] for k in ("input", "output")}
                                                                         for r in recorded]


def test_classification_gives_the_label_and_every_probability(classification_run, tmp_path):
    labels = json.loads((classification_run / "data" / "manifest.json").read_text())["labels"]
    recorded = read_jsonl(classification_run / "eval_predictions.jsonl")
    out = tmp_path / "labels.jsonl"
    predict(classification_run, classification_run / "data" / "test.jsonl", out, console=QUIET)
    written = read_jsonl(out)
    assert len(written) == len(recorded) > 0
    assert [w["prediction"] for w in written] == [r["tuned"] for r in recorded]
    for w in written:
        probs = w["probabilities"]
        assert list(probs) == labels
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert w["prediction"] == max(probs, key=probs.get)
        assert all(0.0 < p < 1.0 for p in probs.values())


def test_bad_rows_are_one_error_naming_each_line_and_field(extraction_run, tmp_path):
    bad = tmp_path / "new_emails.jsonl"
    bad.write_text('{"input": "Book 2 x 40HC Shanghai to Rotterdam"}\n{"text": "no input field"}\n'
                   '{"input": 5}\n{"input": "unclosed\n{"input": "   "}\n{"input": "Book it<|im_end|>"}\n',
                   encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError) as info:
        predict(extraction_run, bad, out, console=QUIET)
    message = str(info.value)
    assert message.startswith(f"5 problems in {bad} (5 rows)")
    assert f"{bad}:6: input: contains the special token '<|im_end|>'" in message
    assert f"{bad}:2: input: missing (expected a non-empty string)" in message
    assert f"{bad}:3: input: expected a string, found int" in message
    assert f"{bad}:4: not valid JSON" in message
    assert f"{bad}:5: input: empty text" in message
    assert f"{bad}:1:" not in message
    assert not out.exists()


def test_chat_inputs_end_with_a_user_turn_and_a_reference_answer_is_dropped(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "What is a container?"}]},
        {"messages": [{"role": "user", "content": "What is a container?"},
                      {"role": "assistant", "content": "A steel box."}], "id": 7},
        {"messages": [{"role": "system", "content": "Be brief."}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]},
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]), encoding="utf-8")
    first, second = read_inputs(path, "chat", None)
    assert first.prompt == second.prompt == [{"role": "user", "content": "What is a container?"}]
    assert second.given == rows[1]  # written back as given, reference answer included

    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_inputs(path, "chat", None)
    assert f"{path}:3: messages[0].role: a chat to answer must end with a user turn, found 'system'" in str(info.value)
    assert f"{path}:4: messages[1].role: expected one of system, user, assistant, found 'tool'" in str(info.value)


def test_extraction_prompt_carries_the_instruction_and_columns_map_the_input(tmp_path):
    path = tmp_path / "emails.csv"
    path.write_text("email,ref\n\"  Please book 2 x 20GP \",A1\n", encoding="utf-8")
    # the recipe maps output too; predict input rows need only the input column
    (row,) = read_inputs(path, "extraction", "Return booking JSON.", {"input": "email", "output": "booking"})
    assert row.prompt == [{"role": "system", "content": "Return booking JSON."},
                          {"role": "user", "content": "Please book 2 x 20GP"}]
    assert row.given == {"email": "  Please book 2 x 20GP ", "ref": "A1"}  # as given, not normalised
    with pytest.raises(DataError, match="data.columns: .* has no column input: body"):
        read_inputs(path, "extraction", None, {"input": "body"})


def test_cli_predict_writes_the_file_and_prints_the_rate(extraction_run, tmp_path):
    out = tmp_path / "cli" / "predictions.jsonl"
    result = CliRunner().invoke(app, ["predict", str(extraction_run), "--input", str(extraction_run / "data" / "test.jsonl"),
                                      "--out", str(out), "--limit", "2", "--batch-size", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out)) == 2
    assert "2 rows by base + RUN/adapter" in " ".join(result.output.split())
