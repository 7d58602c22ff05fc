"""`peftkit quickstart` end to end on a tiny model: train, eval, the hand-written set, merge, one table."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from peftkit.catalog.shipping_emails import HANDWRITTEN_BOOKINGS
from peftkit.errors import DataError
from peftkit.evaluate.metrics import extraction_scores
from peftkit.quickstart import quickstart, score_handwritten


@pytest.fixture(scope="module")
def summary(tiny_llama_dir, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    sets = [f"model.name={tiny_llama_dir}", "train.max_steps=2", "data.size=24", "eval.max_new_tokens=8",
            "eval.max_examples=4", "eval.general.bbc_news=4", "eval.general.chatterbot=4",
            f"output.runs_dir={runs_dir}", "output.run_id=q", "output.mlflow=false"]
    return quickstart(sets, console=Console(stderr=True, quiet=True))


def _table_text(summary) -> str:
    console = Console(width=240, record=True, file=io.StringIO())
    console.print(summary.table())
    return console.export_text()


def test_scores_the_tuned_model_on_every_handwritten_email(summary) -> None:
    out = summary.run_dir / "evals" / "handwritten_bookings"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in HANDWRITTEN_BOOKINGS.read_text().splitlines()]
    assert [r["input"] for r in rows] == [e["input"] for e in expected]
    metrics = json.loads((out / "metrics.json").read_text())
    rescored = extraction_scores([r["prediction"] for r in rows], [r["output"] for r in rows])
    assert metrics["tuned"] == rescored == summary.handwritten
    assert metrics["eval"]["examples"] == len(expected) and metrics["eval"]["scored"] == "tuned only"
    assert "base" not in metrics
    assert (summary.run_dir / "merged" / "model.safetensors").is_file()  # merge still runs after it


def test_table_shows_both_sets_and_the_verdict(summary) -> None:
    text = _table_text(summary)
    m, h = summary.metrics, summary.handwritten
    assert f"generated test emails ({m['tuned']['examples']})" in text
    assert f"hand-written emails ({h['examples']})" in text
    lines = text.splitlines()
    handwritten_at = next(i for i, line in enumerate(lines) if "hand-written emails" in line)
    field_line = next(line for line in lines[handwritten_at:] if "field accuracy" in line)
    assert f"{h['field_accuracy']:.1%}" in field_line and "not scored" in field_line
    verdict = m["verdict"]
    verdict_line = next(line for line in lines if "verdict" in line)
    assert verdict["answer"].capitalize() in verdict_line
    assert verdict["why"].split("; ")[0][:40] in text.replace("\n", " ")


def test_score_handwritten_takes_another_labelled_file(summary, tmp_path) -> None:
    rows = [json.loads(line) for line in HANDWRITTEN_BOOKINGS.read_text().splitlines()][:3]
    path = tmp_path / "three.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = score_handwritten(summary.run_dir, path, console=Console(stderr=True, quiet=True))
    assert scores["examples"] == 3
    written = json.loads((summary.run_dir / "evals" / "three" / "metrics.json").read_text())
    assert written["tuned"] == scores and written["eval"]["data"] == str(path)


def test_score_handwritten_names_the_rows_without_a_label(summary, tmp_path) -> None:
    path = tmp_path / "unlabelled.jsonl"
    path.write_text(json.dumps({"input": "Need 1 x 40HC Busan to Tokyo, MSC."}) + "\n"
                    + json.dumps({"input": "2x20GP Antwerp-Busan", "output": '{"carrier": "MSC"}'}) + "\n")
    with pytest.raises(DataError, match=r"unlabelled.jsonl:1\b.*'output'") as info:
        score_handwritten(summary.run_dir, path, console=Console(stderr=True, quiet=True))
    assert "unlabelled.jsonl:2" not in str(info.value)
    assert not (summary.run_dir / "evals" / "unlabelled").exists()
