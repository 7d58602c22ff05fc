"""`peftkit plan` (recipe and flag forms, --json) and the guard of `peftkit train`."""

import json

import pytest
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.plan.guard import WontFitError, check_fits, spec_from_recipe
from peftkit.plan.hardware import GPUS, Device
from peftkit.recipe import load_recipe

runner = CliRunner()


def plan_json(*args):
    result = runner.invoke(app, ["plan", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_trade_off_table_json_has_every_method_and_gpu():
    report = plan_json("--model", "llama-2-7b", "--method", "full,lora,qlora", "--gpu", "all", "--seq", "1024")
    plans = {p["method"]: p for p in report["plans"]}
    assert list(plans) == ["full", "lora", "qlora"]
    peaks = [plans[m]["memory"]["peak_bytes"] for m in ("full", "lora", "qlora")]
    assert peaks[0] > peaks[1] > peaks[2]
    for p in plans.values():
        assert [v["device"] for v in p["verdicts"]] == list(GPUS)
        assert sum(p["memory"]["components"].values()) >= p["memory"]["peak_bytes"] > 0
    # pure-bf16 full fine-tuning with AdamW: weights 2 + gradients 2 + states 4 bytes per parameter
    assert plans["full"]["memory"]["phases"]["optimizer step"] > 8 * plans["full"]["memory"]["params"]["total"]
    assert not any(v["fits"] for v in plans["full"]["verdicts"] if v["memory_bytes"] < 48 * 2**30)
    assert plans["qlora"]["verdicts"][list(GPUS).index("rtx-4090")]["fits"]
    st = plans["lora"]["storage"]
    assert st["full_copies_bytes"] == 100 * st["base_bytes"] and st["ratio"] > 10


def test_flag_form_gives_advice_that_fits():
    report = plan_json("--model", "llama-3.1-8b", "--method", "qlora", "--rank", "16", "--batch", "4", "--seq", "2048",
                       "--gpu", "rtx-4090")
    plan = report["plans"][0]
    assert not plan["verdicts"][0]["fits"]
    advice = plan["advice"]
    assert advice["fits_after_all"]
    fitting = [c for c in advice["single_changes"] if c["fits"]]
    assert fitting and all(c["peak_bytes"] < plan["memory"]["peak_bytes"] for c in fitting)
    assert plan["cost"][0]["hours"] > 0 and plan["cost"][0]["usd"] > 0


def test_recipe_form_and_unknown_gpu(tiny_llama_dir):
    report = plan_json("quickstart", "--set", f"model.name={tiny_llama_dir}", "--gpu-memory", "16GiB")
    assert report["plans"][0]["memory"]["spec"]["seq"] == load_recipe("quickstart").data.max_length
    assert report["plans"][0]["verdicts"][0]["fits"]
    result = runner.invoke(app, ["plan", "--model", "llama-2-7b", "--gpu", "rtx-9090"])
    assert result.exit_code != 0 and "unknown GPU" in str(result.exception)


def test_guard_stops_an_impossible_run_before_loading(tiny_llama_dir, runs_dir):
    sets = [f"model.name={tiny_llama_dir}", "train.batch_size=100000", "data.max_length=4096",
            f"output.runs_dir={runs_dir}", "output.run_id=r"]
    result = runner.invoke(app, ["train", "quickstart", *[a for s in sets for a in ("--set", s)]])
    assert isinstance(result.exception, WontFitError)
    assert "does not fit" in str(result.exception) and "--force" in str(result.exception)
    assert not (runs_dir / "r").exists()  # stopped before the run directory, data or model


def test_guard_passes_a_run_that_fits_and_reads_the_recipe(tiny_llama_dir):
    recipe = load_recipe("quickstart", [f"model.name={tiny_llama_dir}"])
    spec = spec_from_recipe(recipe, "cpu")
    from peftkit.train.precision import resolve_precision

    # planned as peftkit trains it here: a float32 recipe's frozen base is stored in bf16 on a bf16 machine
    dtype = "bfloat16" if resolve_precision("auto", "cpu").name == "bf16" else "float32"
    assert (spec.method, spec.rank, spec.batch, spec.seq, spec.dtype, spec.path) == ("lora", 16, 4, 384, dtype, "peftkit")
    from rich.console import Console

    assert check_fits(recipe, Console(quiet=True), Device("big", 64 * 2**30, "cpu"))["fits"]
    with pytest.raises(WontFitError):
        check_fits(recipe, Console(quiet=True), Device("tiny", 2**20, "cpu"))


def test_serve_plan_json():
    report = plan_json("--model", "llama-3.1-8b", "--serve", "--context", "8192", "--concurrent", "16",
                       "--adapters", "8", "--gpu", "l4,a100-80gb")
    c = report["serve"]["components"]
    assert c["KV cache"] == 16 * 8192 * 2 * 32 * 8 * 128 * 2
    assert [v["fits"] for v in report["verdicts"]] == [False, True]
