"""End to end on a tiny model: early stopping keeps the best adapter, eval passes and fails the
forgetting gate, attention inspection, and report.html renders in headless Chromium."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peftkit.cli import app

runner = CliRunner()
EVAL_SETS = ["eval.max_examples=4", "eval.max_new_tokens=8", "eval.general.bbc_news=4", "eval.general.chatterbot=4",
             "eval.general.max_length=64"]
CHROMIUM = Path("/usr/bin/chromium")


def invoke(*args):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def sets(*items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory) -> Path:
    """Up to 10 steps at a learning rate high enough that validation loss turns back up (seeded):
    patience 2 stops it at step 3 and step 1 is the best."""
    runs = tmp_path_factory.mktemp("runs")
    invoke("train", "chatterbot-sft", *sets(f"model.name={tiny_llama_dir}", "data.size=40", "train.max_steps=10",
                                        "train.eval_every=1", "train.lr=0.5", "train.warmup_ratio=0",
                                        "train.early_stopping.patience=2", "train.early_stopping.general_loss_increase=100",
                                        "train.early_stopping.general_examples=2",
                                        f"output.runs_dir={runs}", "output.run_id=a", "output.mlflow=false"))
    return runs / "a"


def test_early_stopping_keeps_the_best_checkpoint(run):
    train = json.loads((run / "metrics.json").read_text())["train"]
    es = train["early_stopping"]
    rounds = train["val_history"][:-1]  # the last entry is the final evaluation of the kept adapter
    best = min(rounds, key=lambda r: r["val_loss"])
    assert es["best_step"] == best["step"] and es["best_val_loss"] == pytest.approx(best["val_loss"])
    assert es["stopped_early"] and es["stopped_at_step"] < es["planned_steps"] == 10
    assert rounds[-1]["val_loss"] > best["val_loss"]  # the last round was worse than the best ...
    assert train["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)  # ... and the best is the adapter kept
    assert len(es["general_loss_history"]) == len(rounds) + 2  # baseline + every round + the final eval
    assert not (run / "checkpoints").exists()


def test_eval_gate_passes_and_fails_inspect_attention_and_report_renders(run, tmp_path, monkeypatch, capsys):
    out = invoke("eval", str(run), *sets(*EVAL_SETS, "eval.max_forgetting.general_ppl_increase=1000")).output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["forgetting"]["passed"] is True and len(metrics["forgetting"]["checks"]) == 1
    assert set(metrics["forgetting"]["deltas"]) == {"bbc-news", "chatterbot"}
    assert "forgetting" in out and "pass" in out and (run / "report.html").is_file()
    assert {"rouge_l", "text_exact_match", "loss", "perplexity", "token_accuracy"} <= set(metrics["tuned"])

    invoke("inspect", "attention", str(run), "--text", "Book 2 x 40HC from Shanghai to Rotterdam.", "--layers", "1")
    attention = json.loads((run / "attention" / "attention.json").read_text())
    assert attention["images"] == ["entropy.png", "head_L1_H0.png", "head_L1_H1.png"]
    assert len(attention["base"]["entropy"]) == 2 and len(attention["base"]["entropy"][0]) == 2

    dom = _render(run / "report.html", tmp_path)
    for table in ("facts", "task-metrics", "forgetting", "examples", "attention-changed"):
        assert f'id="{table}"' in dom, table
    assert dom.count('src="data:image/png;base64,') >= 3 + len(attention["images"])

    # A failing gate: a copy of the run judged with a threshold just under a change it really had.
    broken = run.parent / "b"
    shutil.copytree(run, broken)
    field, worse = _a_worsened_metric(metrics["forgetting"]["deltas"])
    monkeypatch.setattr(sys, "argv", ["peftkit", "eval", str(broken), *sets(*EVAL_SETS, f"eval.max_forgetting.{field}={worse / 2}")])
    from peftkit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    error = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert error and f"forgetting gate failed: eval.max_forgetting.{field}:" in error[0]
    failed = json.loads((broken / "metrics.json").read_text())["forgetting"]
    assert failed["passed"] is False and [c["passed"] for c in failed["checks"]] == [False]
    assert "forgetting gate FAILED" in (broken / "report.html").read_text()

    compare = invoke("report", str(run), str(broken), "--out", str(tmp_path / "cmp.html")).output
    page = (tmp_path / "cmp.html").read_text()
    assert "report:" in compare and ">a<" in page and ">b<" in page and ">FAIL<" in page and ">pass<" in page


def _a_worsened_metric(deltas: dict) -> tuple[str, float]:
    """A gate threshold field and how much (positive) its metric got worse in this run."""
    candidates = [("general_ppl_increase", deltas["bbc-news"]["perplexity"]["delta"]),
                  ("chat_loss_increase", deltas["chatterbot"]["loss"]["delta"]),
                  ("chat_accuracy_drop", -deltas["chatterbot"]["token_accuracy"]["delta"])]
    field, worse = max(candidates, key=lambda c: c[1])
    assert worse > 0, f"nothing got worse after training at lr 0.5: {deltas}"
    return field, worse


def _render(html: Path, tmp_path: Path) -> str:
    """The DOM Chromium built from the page, after checking its screenshot is not blank."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), *flags, f"--user-data-dir={tmp_path / 'profile1'}", "--window-size=1200,1600",
                    f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=120, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]  # [height, width, rgb] floats in 0..1
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.std() > 0.05 and (pixels.mean(-1) < 0.5).mean() > 0.005  # not blank: dark text and plots
    dom = subprocess.run([str(CHROMIUM), *flags, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "<table" in dom
    return dom


def test_report_data_line_names_the_files_or_the_builtin(run, tiny_bert_dir, tmp_path):
    """The facts table says where the data came from: each data.files file, or the built-in dataset."""
    import re

    from peftkit.evaluate.report import build_report

    builtin = build_report([run], out=tmp_path / "builtin.html").path.read_text()
    assert re.search(r"<th>data</th><td>chatterbot \(built-in\) \(train \d+", builtin)

    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"review number {i},{'pos' if i % 3 else 'neg'}\n"
                                                                 for i in range(24)), encoding="utf-8")
    test_rows = [{"text": f"held out {i}", "label": "pos" if i % 2 else "neg"} for i in range(6)]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows), encoding="utf-8")
    recipe = tmp_path / "files.yaml"
    recipe.write_text(json.dumps({
        "name": "files", "model": {"name": str(tiny_bert_dir)},
        "data": {"files": {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.jsonl")},
                 "task": "classification", "split": {"val": 0.0}, "dedup": {"near": False}},
        "method": {"kind": "lora", "r": 4, "dropout": 0.0}, "train": {"max_steps": 1, "batch_size": 8},
        "output": {"runs_dir": str(tmp_path / "runs"), "run_id": "f", "mlflow": False}}), encoding="utf-8")
    invoke("train", str(recipe))
    page = build_report([tmp_path / "runs" / "f"]).path.read_text()
    line = re.search(r"<th>data</th><td>([^<]*)</td>", page).group(1)
    assert line == f"files: train {tmp_path / 'train.csv'}, test {tmp_path / 'test.jsonl'} (train 24, val 0, test 6)"
