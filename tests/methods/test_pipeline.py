"""End to end on the tiny Llama: `train()` then `evaluate()` for a non-LoRA kind (prompt tuning) and full fine-tuning."""

import io
import json

import pytest
from rich.console import Console

from peftkit.errors import RecipeError
from peftkit.evaluate.attention import inspect_attention
from peftkit.evaluate.run import evaluate
from peftkit.train.run import train


def overrides(model_dir, runs_dir, run_id: str, method: str) -> list[str]:
    return [f"model.name={model_dir}", f"method={method}", "train.max_steps=2", "data.size=24", "eval.max_new_tokens=8",
            "eval.max_examples=4", f"output.runs_dir={runs_dir}", f"output.run_id={run_id}", "output.mlflow=false",
            "eval.general.bbc_news=4", "eval.general.chatterbot=4", "train.lr=1e-2"]


@pytest.mark.parametrize("method, artifact, files", [
    ("{kind: prompt, num_virtual_tokens: 4}", "adapter", ["adapter_config.json", "adapter_model.safetensors"]),
    ("{kind: full}", "model", ["model.safetensors", "config.json", "tokenizer.json"]),
])
def test_train_then_evaluate(method, artifact, files, tiny_llama_dir, runs_dir):
    log = io.StringIO()
    console = Console(file=log, width=300)
    result = train("quickstart", overrides(tiny_llama_dir, runs_dir, "r", method), console=console)
    run = result.run_dir
    for name in files:
        assert (run / artifact / name).is_file(), name
    other = "model" if artifact == "adapter" else "adapter"
    assert not (run / other).exists()
    metrics = result.metrics
    assert metrics["steps"] == 2 and metrics["train_loss"] > 0
    assert metrics["artifact"] == artifact
    if artifact == "model":  # every weight trains; the whole model is what is kept
        assert metrics["trainable_params"] == metrics["total_params"]
        assert metrics["model_bytes"] == metrics["adapter_bytes"] == (run / "model" / "model.safetensors").stat().st_size
    else:  # 4 virtual tokens × 64 wide
        assert metrics["trainable_params"] == 4 * 64
    kind = "prompt tuning" if artifact == "adapter" else "full fine-tuning"
    model_line = next(l for l in log.getvalue().splitlines() if l.startswith("model: "))
    assert kind in model_line and "LoRA r=" not in model_line

    results = evaluate(run, console=Console(quiet=True), gate=False, report=False)
    assert results["eval"]["method"] == json.loads((run / "metrics.json").read_text())["train"]["method"]
    assert "field_accuracy" in results["tuned"] and results["tuned"]["examples"] == results["base"]["examples"] > 0
    # the tuned model really is different from the base: general-text loss moved
    assert results["forgetting"]["deltas"]
    assert any(d["loss"]["delta"] != 0 for d in results["forgetting"]["deltas"].values() if "loss" in d)
    predictions = [json.loads(l) for l in (run / "eval_predictions.jsonl").read_text().splitlines()]
    assert all(isinstance(p["tuned"], str) for p in predictions)

    text = "Please book 2 x 40HC from Shanghai to Rotterdam"
    if artifact == "adapter":  # prompt tuning: extra virtual tokens, maps not comparable head by head
        with pytest.raises(RecipeError, match="prompt tuning cannot be inspected head by head"):
            inspect_attention(run, text=text)
    else:  # the fully tuned model's attention differs from the base's
        summary = inspect_attention(run, text=text).summary
        assert abs(summary["most_changed"][0]["change"]) > 0
