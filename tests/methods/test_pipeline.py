"""End to end on the tiny Llama: `train()`, `evaluate()` and attention inspection for prompt tuning, QLoRA
(4-bit base in training and eval) and full fine-tuning."""

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


ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("method, artifact, files", [
    ("{kind: prompt, num_virtual_tokens: 4}", "adapter", ADAPTER_FILES),
    ("{kind: qlora, r: 4, target_modules: attention}", "adapter", ADAPTER_FILES),
    ("{kind: bottleneck, placement: houlsby}", "adapter", ADAPTER_FILES),
    ("{kind: full}", "model", ["model.safetensors", "config.json", "tokenizer.json"]),
], ids=["prompt", "qlora", "bottleneck", "full"])
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
    elif "prompt" in method:  # 4 virtual tokens × 64 wide
        assert metrics["trainable_params"] == 4 * 64
    elif "bottleneck" in method:  # houlsby: 2 adapters per layer, each 64→4→64 with biases
        assert metrics["trainable_params"] == 2 * 2 * ((64 * 4 + 4) + (4 * 64 + 64))
    else:  # r=4 on q_proj (64→64) and v_proj (64→32), two layers
        assert metrics["trainable_params"] == 2 * (4 * (64 + 64) + 4 * (64 + 32))
        # the 73,728 decoder linear weights are stored in 4 bits (~3.5 bytes less each than fp32); embeddings stay fp32
        fp32_bytes = sum(f.stat().st_size for f in tiny_llama_dir.glob("*.safetensors"))
        assert metrics["base_model_bytes"] < fp32_bytes - 0.8 * 73_728 * 3.5
    kind = {"adapter": "prompt tuning", "model": "full fine-tuning"}[artifact] if "qlora" not in method else "QLoRA r=4"
    if "bottleneck" in method:
        kind = "bottleneck adapters (houlsby"
    model_line = next(l for l in log.getvalue().splitlines() if l.startswith("model: "))
    assert kind in model_line and (" LoRA r=" not in model_line)

    results = evaluate(run, console=Console(quiet=True), gate=False, report=False)
    assert ("4-bit" in results["eval"]["tuned_model"]) == ("qlora" in method)
    assert results["eval"]["method"] == json.loads((run / "metrics.json").read_text())["train"]["method"]
    assert "field_accuracy" in results["tuned"] and results["tuned"]["examples"] == results["base"]["examples"] > 0
    # the tuned model really is different from the base: general-text loss moved
    assert results["forgetting"]["deltas"]
    assert any(d["loss"]["delta"] != 0 for d in results["forgetting"]["deltas"].values() if "loss" in d)
    predictions = [json.loads(l) for l in (run / "eval_predictions.jsonl").read_text().splitlines()]
    assert all(isinstance(p["tuned"], str) for p in predictions)

    text = "Please book 2 x 40HC from Shanghai to Rotterdam"
    if "prompt" in method:  # extra virtual tokens: maps not comparable head by head
        with pytest.raises(RecipeError, match="prompt tuning cannot be inspected head by head"):
            inspect_attention(run, text=text)
    else:  # the tuned model's attention differs from the base's (qlora: on the 4-bit base)
        summary = inspect_attention(run, text=text).summary
        assert abs(summary["most_changed"][0]["change"]) > 0


@pytest.mark.parametrize("method", [
    "{kind: lora, r: 4, dora: true, dropout: 0.1}", "{kind: lora, r: 4, init: pissa}", "{kind: ia3}",
    "{kind: loha, r: 4}", "{kind: lokr, r: 4}", "{kind: prefix, num_virtual_tokens: 4}", "{kind: bottleneck}",
], ids=["dora", "pissa", "ia3", "loha", "lokr", "prefix", "bottleneck-pfeiffer"])
def test_every_kind_trains_through_train(method, tiny_llama_dir, runs_dir):
    """train() on the bf16 path (autocast, uncast adapter inputs, fused dropout) for the kinds above."""
    result = train("quickstart", overrides(tiny_llama_dir, runs_dir, "k", method) + ["train.precision=bf16"],
                   console=Console(quiet=True))
    assert result.metrics["steps"] == 2 and result.metrics["train_loss"] > 0
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()
