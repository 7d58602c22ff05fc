"""End to end through the CLI: every shipped recipe trains two steps on a tiny model, then eval and merge."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from peftkit.cli import app

runner = CliRunner()

# Per recipe: the tiny model fixture and data sizes that keep each run to seconds.
CASES = {
    "quickstart": ("tiny_llama_dir", ["data.size=24", "eval.max_new_tokens=8"]),
    "chatterbot-sft": ("tiny_llama_dir", ["data.size=30"]),
    "quickstart-replay": ("tiny_llama_dir", ["data.size=24", "eval.max_new_tokens=8"]),
    "bbc-news-lora": ("tiny_bert_dir", ["data.size=60"]),
}


def invoke(*args):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("recipe", sorted(CASES))
def test_recipe_trains_evaluates_and_merges(recipe, request, runs_dir):
    fixture, extra = CASES[recipe]
    model_dir = request.getfixturevalue(fixture)
    sets = [f"model.name={model_dir}", "train.max_steps=2", "train.eval_every=1", "eval.max_examples=4",
            f"output.runs_dir={runs_dir}", "output.run_id=r", "eval.general.bbc_news=4", "eval.general.chatterbot=4",
            *extra]
    invoke("train", recipe, *[a for s in sets for a in ("--set", s)])
    run = runs_dir / "r"
    for name in ("recipe.yaml", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "data/train.jsonl", "data/manifest.json", "train.log", "mlflow_run_id"):
        assert (run / name).exists(), name
    train = json.loads((run / "metrics.json").read_text())["train"]
    assert train["steps"] == 2 and train["train_loss"] > 0 and train["trainable_params"] > 0
    assert len(train["val_history"]) >= 2  # validation loss every step

    out = invoke("eval", str(run)).output
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"train", "base", "tuned", "eval"}
    test_count = json.loads((run / "data" / "manifest.json").read_text())["splits"]["test"]["count"]
    assert metrics["eval"]["examples"] == min(4, test_count) > 0  # eval.max_examples caps the test split
    headline = {"quickstart": "field_accuracy", "quickstart-replay": "field_accuracy", "chatterbot-sft": "loss", "bbc-news-lora": "accuracy"}[recipe]
    assert headline in metrics["tuned"] and headline in out

    invoke("merge", str(run))
    merge = json.loads((run / "metrics.json").read_text())["merge"]
    assert merge["passed"] and merge["max_abs_diff"] <= merge["atol"]
    assert (run / "merged" / "model.safetensors").is_file()

    listing = invoke("runs", "--runs-dir", str(runs_dir), "--json").output
    assert json.loads(listing)[0]["run"] == "r"


def test_mlflow_store_holds_the_run(tiny_llama_dir, runs_dir):
    import mlflow

    sets = [f"model.name={tiny_llama_dir}", "train.max_steps=1", "data.size=12", f"output.runs_dir={runs_dir}",
            "output.run_id=m"]
    invoke("train", "quickstart", *[a for s in sets for a in ("--set", s)])
    mlflow.set_tracking_uri(f"sqlite:///{runs_dir.resolve()}/mlflow.db")
    run = mlflow.get_run((runs_dir / "m" / "mlflow_run_id").read_text())
    assert run.data.params["method.r"] == "16"
    assert run.data.metrics["steps"] == 1.0
    assert run.data.tags["peftkit.run_dir"].endswith("/m")
    assert run.info.artifact_uri.startswith((runs_dir / "mlartifacts").resolve().as_uri())


def test_listings_and_recipe_show():
    assert "smollm2-135m" in invoke("models").output
    assert "shipping-emails" in invoke("datasets").output
    shown = invoke("recipe", "show", "quickstart", "--set", "train.lr=0.1").output
    assert "lr: 0.1" in shown and "parity_atol" in shown


def test_user_mistake_is_one_red_line_and_exit_1(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "peftkit.cli", "train", "quickstart", "--set", "model.name=nope-model",
                           "--set", f"output.runs_dir={tmp_path}"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert lines and "unknown model 'nope-model'" in lines[0]


def test_eval_before_train_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "peftkit.cli", "eval", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "not a run directory" in proc.stderr and "Traceback" not in proc.stderr
