"""`peftkit compare`: every method trains and evaluates on the same data; rows, plot and page are
written; a method that cannot validate is a failed row and the command exits 1 at the end."""

import json

import pytest
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.compare import METHODS, CompareError, compare, method_block, parse_method_sets, parse_methods

runner = CliRunner()


def _sets(tiny_llama_dir, runs_dir):
    return [f"model.name={tiny_llama_dir}", "train.max_steps=2", "data.size=16", "eval.max_examples=2",
            "eval.max_new_tokens=4", "eval.general.enabled=false", f"output.runs_dir={runs_dir}", "output.mlflow=false"]


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(CompareError) as exc:
        parse_methods("lora,qdora")
    assert "'qdora'" in str(exc.value) and all(name in str(exc.value) for name in METHODS)
    with pytest.raises(CompareError, match="more than once"):
        parse_methods("lora, lora")
    assert parse_methods(" lora,IA3 ") == ["lora", "ia3"]


def test_method_set_is_for_one_listed_method():
    assert parse_method_sets(["full:train.lr=5e-5", "full:train.epochs=2"], ["lora", "full"]) == {
        "full": ["train.lr=5e-5", "train.epochs=2"]}
    with pytest.raises(CompareError, match="not among --methods"):
        parse_method_sets(["prompt:train.lr=1e-2"], ["lora", "full"])
    with pytest.raises(CompareError, match="METHOD:KEY=VALUE"):
        parse_method_sets(["train.lr=1e-2"], ["lora"])


def test_method_block_keeps_lora_fields_for_the_lora_family_only():
    recipe_method = {"kind": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "attention"}
    assert method_block(recipe_method, "dora") == {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "attention",
                                                   "kind": "lora", "dora": True}
    assert method_block(recipe_method, "qlora")["r"] == 4
    assert method_block(recipe_method, "prefix") == {"kind": "prefix"}


def test_compare_two_methods(tiny_llama_dir, runs_dir):
    sets = _sets(tiny_llama_dir, runs_dir)
    result = runner.invoke(app, ["compare", "quickstart", "--methods", "dora,lora", "--method-set", "lora:train.lr=1e-3",
                                 *[a for s in sets for a in ("--set", s)]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "[1/2] dora: starting" in result.output and "[2/2] lora: starting" in result.output
    out_dir = next(runs_dir.glob("quickstart-compare-*/compare.json")).parent
    doc = json.loads((out_dir / "compare.json").read_text())
    assert [r["method"] for r in doc["rows"]] == ["dora", "lora"]
    dora, lora = doc["rows"]
    assert lora["status"] == "ok" and lora["metric"] == "field_accuracy"
    for key in ("tuned", "base", "trainable_params", "trainable_percent", "peak_rss_bytes", "seconds_per_step", "size_bytes"):
        assert isinstance(lora[key], (int, float)), key
    assert 0 < lora["trainable_params"] < lora["total_params"] and lora["size_of"] == "adapter"
    assert doc["data_sha256"] == lora["data_sha256"] and set(lora["data_sha256"]) == {"train", "val", "test"}
    weights = runs_dir / f"{out_dir.name}-lora" / "adapter" / "adapter_model.safetensors"  # a normal run dir
    assert lora["size_bytes"] == weights.stat().st_size  # the adapter weights, not the tokenizer saved beside them
    assert dora["status"] == "ok" and dora["data_sha256"] == lora["data_sha256"]  # identical splits across methods
    assert dora["trainable_params"] > lora["trainable_params"]  # DoRA adds a magnitude vector per layer
    # the per-method override reached that method only
    assert lora["method_overrides"] == ["train.lr=1e-3"] and dora["method_overrides"] == []
    assert doc["method_overrides"] == {"lora": ["train.lr=1e-3"]}
    assert "lr: 0.001" in (runs_dir / f"{out_dir.name}-lora" / "recipe.yaml").read_text()
    assert "lr: 0.001" not in (runs_dir / f"{out_dir.name}-dora" / "recipe.yaml").read_text()
    assert "name: quickstart" in (out_dir / "compare-recipe.yaml").read_text()
    png = (out_dir / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out_dir / "report.html").read_text()
    assert 'id="methods"' in html and 'id="methods-plot"' in html and "data:image/png;base64," in html
    assert f"../{out_dir.name}-lora/report.html" in html  # link to the method's own run report


def test_method_that_does_not_apply_is_a_row_not_a_crash(tiny_llama_dir, runs_dir, tmp_path):
    """A PeftkitError from training (here: target modules the model does not have) makes the row
    `not applicable` with the message; compare.json and the page are still written."""
    sets = _sets(tiny_llama_dir, runs_dir) + ["method.target_modules=[no_such_proj]"]
    result = compare("quickstart", ["lora"], overrides=sets, out_dir=tmp_path / "cmp")
    row = result.rows[0]
    assert row["status"] == "not applicable" and "no_such_proj" in row["reason"] and not result.failed
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"][0]["status"] == "not applicable"
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "not applicable: " in html and "no_such_proj" in html
    assert (tmp_path / "cmp" / "compare.png").is_file()
