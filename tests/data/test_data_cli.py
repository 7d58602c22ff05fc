"""`peftkit data inspect` and `peftkit data prepare` through the CLI, and `peftkit train` on a raw file."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.errors import DataError

FILES = Path(__file__).parent / "files"
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_inspect_prints_table_problems_and_saves_histogram(tmp_path, tiny_bert_dir):
    png = tmp_path / "h.png"
    out = invoke("data", "inspect", FILES / "multiline.csv", "-c", "text=review", "-c", "label=sentiment",
                 "--model", tiny_bert_dir, "--histogram", png, "--max-length", 16)
    flat = " ".join(out.replace("│", " ").split())  # table cells wrap at the runner's 80 columns
    assert "6 read, 4 valid, 2 with problems" in flat
    assert "format classification" in flat and "neg 2, pos 2" in flat
    assert "majority baseline 'neg': 50% of valid rows" in flat  # a tie goes to the first label by name
    assert "row 4 (line 8)" in flat and "expected 2 fields" in flat
    assert png.stat().st_size > 5000


def test_inspect_counts_duplicates(tmp_path, tiny_llama_dir):
    rows = [{"instruction": f"Describe item number {i} in the catalogue please", "response": f"It is item {i}."}
            for i in range(6)]
    rows += [rows[0], {**rows[1], "instruction": rows[1]["instruction"].upper() + "  "}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = invoke("data", "inspect", path, "--model", tiny_llama_dir, "--histogram", tmp_path / "h.png")
    flat = " ".join(out.replace("│", " ").split())
    assert "2 exact" in flat and "format instruction" in flat and "task chat" in flat


def test_prepare_writes_the_run_dir_and_shows_the_template(tmp_path, tiny_llama_dir):
    recipe = {"name": "mine", "model": {"name": str(tiny_llama_dir)},
              "data": {"files": {"train": str(FILES / "chat_problems.jsonl"), "test": str(FILES / "instruction.jsonl.gz")},
                       "on_error": "skip", "split": {"val": 0.0}},
              "output": {"runs_dir": str(tmp_path / "runs"), "run_id": "r"}}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = invoke("data", "prepare", path)
    data = tmp_path / "runs" / "r" / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 1 and manifest["splits"]["test"]["count"] == 3
    assert manifest["rejects"] == {"count": 6, "by_reason": {"invalid": 6}, "file": "rejects.jsonl"}
    assert [i["kind"] for i in manifest["inputs"]] == ["jsonl", "jsonl.gz"]
    assert manifest["template"]["checked"] and set(manifest["template"]["examples"]) == {"train", "test"}
    assert "template check: train example" in out and "⟦hello<|im_end|>" in out
    assert manifest["template"]["stop_tokens"] == ["<|im_end|>"] and manifest["template"]["rows_checked"] == 4
    assert (data / "lengths.png").is_file() and len((data / "rejects.jsonl").read_text().splitlines()) == 6


def test_prepare_prints_label_distribution_and_majority_baseline(tmp_path, tiny_bert_dir):
    rows = [{"text": f"ticket {i}: the printer on floor {i} is {label}", "label": label}
            for i, label in enumerate(["broken"] * 14 + ["fine"] * 6)]
    path = tmp_path / "tickets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"name": "tickets", "model": {"name": str(tiny_bert_dir)},
              "data": {"dataset": str(path), "split": {"val": 0.0, "test": 0.3}, "dedup": {"near": False}},
              "output": {"runs_dir": str(tmp_path / "runs"), "run_id": "t"}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(recipe))
    flat = " ".join(invoke("data", "prepare", tmp_path / "t.yaml").split())
    assert "labels in train: broken 10 (71%), fine 4 (29%)" in flat
    assert "majority baseline 'broken': 71% of train, 67% of test" in flat


def test_train_runs_prepare_on_a_raw_file_and_refuses_preference(tmp_path, tiny_llama_dir):
    rows = [{"prompt": f"Count {i}:", "completion": " " + " ".join(str(k) for k in range(i + 3))} for i in range(12)]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = [f"model.name={tiny_llama_dir}", f"data.dataset={path}", "train.max_steps=1", "train.batch_size=4",
            f"output.runs_dir={tmp_path / 'runs'}", "output.run_id=c", "output.mlflow=false"]
    invoke("train", "chatterbot-sft", *[a for s in sets for a in ("--set", s)])
    run = tmp_path / "runs" / "c"
    assert json.loads((run / "data" / "manifest.json").read_text())["task"] == "completion"
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 1
    invoke("eval", run)
    invoke("merge", run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tuned"]["loss"] > 0 and metrics["merge"]["passed"]
    sets[1], sets[5] = f"data.dataset={FILES / 'preference.jsonl'}", "output.run_id=p"
    with pytest.raises(DataError, match="prepared and stored for DPO"):
        runner.invoke(app, ["train", "chatterbot-sft", "--set", "data.on_error=skip",
                            *[a for s in sets for a in ("--set", s)]], catch_exceptions=False)
