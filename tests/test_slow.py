"""The real built-in models: load, train a few steps, save an adapter that reloads identically."""

import json

import pytest
import torch

from peftkit.train.run import train

pytestmark = pytest.mark.slow


def test_smollm2_trains_and_answers_in_chat_format(runs_dir):
    result = train("quickstart", overrides=["train.max_steps=3", "data.size=40", "train.batch_size=4",
                                            f"output.runs_dir={runs_dir}", "output.mlflow=false"])
    m = result.metrics
    assert m["steps"] == 3 and m["trainable_params"] == 4_884_480  # r=16 on all 7 linear kinds x 30 layers
    assert m["loss_history"][0]["loss"] < 5.0  # the real pretrained model, not random weights (~10.8)
    assert m["val_loss"] < m["loss_history"][0]["loss"] * 1.5
    cfg = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 16


def test_minilm_classifier_adapter_reloads_identically(runs_dir):
    from peft import PeftModel

    from peftkit.loading import load_classifier, load_tokenizer
    from peftkit.recipe import load_recipe

    result = train("bbc-news-lora", overrides=["train.max_steps=4", "data.size=100", "train.eval_every=0",
                                               f"output.runs_dir={runs_dir}", "output.mlflow=false"])
    assert result.metrics["steps"] == 4
    recipe = load_recipe(result.run_dir / "recipe.yaml")
    labels = json.loads((result.run_dir / "data" / "manifest.json").read_text())["labels"]
    tok = load_tokenizer(recipe.model)
    enc = tok(["Shares in the bank rose after profits beat forecasts."], return_tensors="pt")
    torch.manual_seed(0)
    a = PeftModel.from_pretrained(load_classifier(recipe.model, labels), result.run_dir / "adapter").eval()
    torch.manual_seed(1)  # a different random head init must not matter: the head is saved with the adapter
    b = PeftModel.from_pretrained(load_classifier(recipe.model, labels), result.run_dir / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(a(**enc).logits, b(**enc).logits)
