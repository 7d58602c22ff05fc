"""`peftkit sweep`: a 2x1 grid on the tiny model trains two ordinary runs, tabulates them, marks the best and
draws the Pareto plots; grids are checked before anything trains; the gate and the front are applied to rows."""

import json

import pytest
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.sweep import SweepError, best_trial, combinations, pareto_front, parse_grid, sweep

runner = CliRunner()


def _sets(tiny_llama_dir, runs_dir):
    return [f"model.name={tiny_llama_dir}", "train.max_steps=2", "data.size=16", "eval.max_examples=2",
            "eval.max_new_tokens=4", "eval.general.enabled=false", f"output.runs_dir={runs_dir}", "output.mlflow=false"]


def test_grid_parsing_and_combinations():
    grid = parse_grid(["method.r=4,8", "train.lr=5e-4, 1e-3"])
    assert grid == {"method.r": ["4", "8"], "train.lr": ["5e-4", "1e-3"]}
    assert combinations(grid) == [{"method.r": "4", "train.lr": "5e-4"}, {"method.r": "4", "train.lr": "1e-3"},
                                  {"method.r": "8", "train.lr": "5e-4"}, {"method.r": "8", "train.lr": "1e-3"}]
    for bad, message in ((["method.r"], "KEY=V1,V2"), (["method.r=4", "method.r=8"], "given twice"),
                         (["method.r=4,4"], "repeated"), ([], "at least one")):
        with pytest.raises(SweepError, match=message):
            parse_grid(bad)


def test_a_value_the_recipe_rejects_stops_the_sweep_before_training(runs_dir):
    with pytest.raises(SweepError, match="method.r=0"):
        sweep("quickstart", ["method.r=4,0"], overrides=[f"output.runs_dir={runs_dir}"])
    with pytest.raises(SweepError, match="--trials 5"):
        sweep("quickstart", ["method.r=4,8"], search="optuna", trials=5, overrides=[f"output.runs_dir={runs_dir}"])
    assert not list(runs_dir.glob("*"))  # nothing was trained or written


def _row(trial, tuned, params, sps, status="ok", forgetting=True):
    return {"trial": trial, "status": status, "metric": "accuracy", "tuned": tuned, "trainable_params": params,
            "seconds_per_step": sps, "forgetting_passed": forgetting}


def test_best_and_pareto_front_respect_the_gate():
    rows = [_row("t01", 0.80, 100, 1.0), _row("t02", 0.90, 400, 2.0), _row("t03", 0.85, 800, 0.5),
            _row("t04", 0.95, 200, 3.0, status="gate failed", forgetting=False), _row("t05", None, 50, None, "failed")]
    assert best_trial(rows)["trial"] == "t02"  # t04 is better but failed the forgetting gate
    assert [r["trial"] for r in pareto_front(rows, "trainable_params")] == ["t01", "t04"]
    assert [r["trial"] for r in pareto_front(rows, "seconds_per_step")] == ["t03", "t02", "t04"]
    loss = [dict(r, metric="loss") for r in rows[:3]]
    assert best_trial(loss)["trial"] == "t01"  # lower is better for a loss


def test_sweep_two_by_one_grid_on_the_tiny_model(tiny_llama_dir, runs_dir):
    sets = _sets(tiny_llama_dir, runs_dir)
    result = runner.invoke(app, ["sweep", "quickstart", "--grid", "method.r=2,4", "--grid", "train.lr=1e-3",
                                 *[a for s in sets for a in ("--set", s)]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out_dir = next(runs_dir.glob("quickstart-sweep-*/sweep.json")).parent
    doc = json.loads((out_dir / "sweep.json").read_text())
    assert [r["params"] for r in doc["rows"]] == [{"method.r": "2", "train.lr": "1e-3"}, {"method.r": "4", "train.lr": "1e-3"}]
    small, large = doc["rows"]
    assert small["status"] == large["status"] == "ok"
    assert 0 < small["trainable_params"] < large["trainable_params"]  # r=2 trains half of r=4's adapter
    for row in doc["rows"]:  # each trial is an ordinary run with its own report
        run = runs_dir / row["run_dir"].split("/")[-1]
        assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "report.html").is_file()
        assert json.loads((run / "metrics.json").read_text())["train"]["trainable_params"] == row["trainable_params"]
    assert small["data_sha256"] == large["data_sha256"]
    assert sum(r["best"] for r in doc["rows"]) == 1 and doc["best"] in ("t01", "t02")
    page = (out_dir / "report.html").read_text()
    assert "data:image/png;base64," in page and "★" in page and "method.r" in page
    assert (out_dir / "pareto.png").stat().st_size > 1000
    assert "best: t0" in result.output
    assert doc["parallel"] == 1 and doc["search"] == "grid"
