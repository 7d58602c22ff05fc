"""`peftkit eval RUN --data FILE` on tiny runs trained for real: a labelled file is read like the run's data,
scored base vs tuned into RUN/evals/<stem>/, and RUN/metrics.json keeps the test split's results."""

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.errors import DataError
from peftkit.evaluate.run import evaluate
from peftkit.train.run import train

QUIET = Console(quiet=True)


def trained_run(recipe: str, model_dir, runs_dir, sets: list[str]):
    sets = [f"model.name={model_dir}", "train.max_steps=2", "train.lr=0.1", f"output.runs_dir={runs_dir}",
            "output.run_id=r", "output.mlflow=false", "eval.general.enabled=false", *sets]
    return train(recipe, sets, console=QUIET).run_dir


@pytest.fixture(scope="module")
def extraction_run(tiny_llama_dir, tmp_path_factory):
    run = trained_run("quickstart", tiny_llama_dir, tmp_path_factory.mktemp("runs"),
                      ["data.size=24", "data.split.val=0.05", "data.split.test=0.2", "eval.max_examples=4", "eval.batch_size=3",
                       "eval.max_new_tokens=8"])
    evaluate(run, console=QUIET, gate=False, report=False)
    return run


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_data_file_scores_into_its_own_folder_and_leaves_the_run_metrics(extraction_run, tmp_path):
    run_metrics = (extraction_run / "metrics.json").read_bytes()
    recorded = read_jsonl(extraction_run / "eval_predictions.jsonl")
    # the run's four scored test rows again, as a user's file with a field of its own
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text("".join(json.dumps({"id": i, "input": r["input"], "output": r["output"]}) + "\n"
                               for i, r in enumerate(recorded)), encoding="utf-8")

    result = CliRunner().invoke(app, ["eval", str(extraction_run), "--data", str(holdout)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out_dir = extraction_run / "evals" / "holdout"
    assert "field_accuracy" in result.output and "general suite is scored by" in " ".join(result.output.split())

    assert (extraction_run / "metrics.json").read_bytes() == run_metrics
    scored = json.loads((out_dir / "metrics.json").read_text())
    assert scored["eval"]["split"] == "file" and scored["eval"]["examples"] == 4
    assert scored["eval"]["data"]["path"] == str(holdout) and len(scored["eval"]["data"]["sha256"]) == 64
    assert "general suite" in scored["forgetting"]["skipped"] and not scored["forgetting"]["deltas"]
    # the same rows through the file path give the same answers and scores as the run's own eval
    answers = read_jsonl(out_dir / "eval_predictions.jsonl")
    assert [a["tuned"] for a in answers] == [r["tuned"] for r in recorded]
    assert [a["base"] for a in answers] == [r["base"] for r in recorded]
    assert [a["input"] for a in answers] == [r["input"] for r in recorded]  # canonical records, in file order
    own = json.loads(run_metrics)
    for side in ("base", "tuned"):
        assert scored[side]["field_accuracy"] == own[side]["field_accuracy"]
        assert scored[side]["json_valid"] == own[side]["json_valid"]


def test_bad_rows_of_a_data_file_are_listed_with_line_and_field(extraction_run, tmp_path):
    bad = tmp_path / "labelled.jsonl"
    bad.write_text('{"input": "Book 2 x 40HC", "output": "{}"}\n{"input": "Book 1 x 20GP"}\n'
                   '{"input": "", "output": "{}"}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        evaluate(extraction_run, console=QUIET, gate=False, report=False, data=bad)
    message = str(info.value)
    assert f"{bad}:2: output: missing (expected a non-empty string)" in message
    assert f"{bad}:3: input: empty text" in message
    assert not (extraction_run / "evals" / "labelled").exists()


def test_unknown_label_is_an_error_naming_the_line_and_label(tiny_bert_dir, tmp_path):
    run = trained_run("bbc-news-lora", tiny_bert_dir, tmp_path / "runs", ["data.size=60", "train.max_steps=1"])
    labels = json.loads((run / "data" / "manifest.json").read_text())["labels"]
    file = tmp_path / "more_news.jsonl"
    file.write_text(json.dumps({"text": "Shares rose after the results.", "label": labels[0]}) + "\n"
                    + json.dumps({"text": "Rain all week in the north.", "label": "weather"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        evaluate(run, console=QUIET, gate=False, report=False, data=file)
    message = str(info.value)
    assert message.startswith(f"1 problems in {file} (1 rows)")
    assert f"{file}:2: label: 'weather' is not a label of this run (labels: {', '.join(labels)})" in message
    assert not (run / "evals").exists() and "tuned" not in json.loads((run / "metrics.json").read_text())
