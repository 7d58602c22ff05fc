"""The speed plan: auto choices per task, bf16 storage with fp32 trainable weights, checkpointing only when needed,
and a tiny end-to-end train on each precision path that logs the path it took."""

import json

import pytest
import torch

import peftkit.train.speed as speed
from peftkit.recipe import LoraSpec, ModelSpec, TrainSpec
from peftkit.train.speed import plan_speed, prepare_model_in_place


def test_auto_plan_per_task():
    causal = plan_speed(TrainSpec(), "causal-lm")
    assert causal.packing == "off" and causal.labelled_positions_loss
    classify = plan_speed(TrainSpec(packing="padding_free"), "sequence-classification")
    assert classify.packing == "off" and not classify.labelled_positions_loss
    forced = plan_speed(TrainSpec(precision="fp32", packing="bfd", attention="eager", compile="on"), "causal-lm")
    assert (forced.precision, forced.packing, forced.attention, forced.compile) == ("fp32", "bfd", "eager", True)
    assert forced.load_spec(ModelSpec(name="m")).dtype == "float32"
    assert "fp32" in forced.summary() and "packing bfd" in forced.summary()


def test_bf16_plan_stores_base_in_bf16_only_when_the_recipe_said_fp32():
    plan = plan_speed(TrainSpec(precision="bf16"), "causal-lm")
    assert plan.load_spec(ModelSpec(name="m", dtype="float32")).dtype == "bfloat16"
    assert plan.load_spec(ModelSpec(name="m", dtype="float16")).dtype == "float16"
    assert plan.trainer_overrides()["bf16"] is True


def test_checkpointing_turns_on_only_when_activations_do_not_fit(monkeypatch):
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    monkeypatch.setattr(speed, "free_memory_bytes", lambda device: 64 * 1024**3)
    assert not plan_speed(TrainSpec(batch_size=8), "causal-lm", config, max_length=256).gradient_checkpointing
    monkeypatch.setattr(speed, "free_memory_bytes", lambda device: 256 * 1024**2)
    assert plan_speed(TrainSpec(batch_size=8), "causal-lm", config, max_length=256).gradient_checkpointing
    assert plan_speed(TrainSpec(gradient_checkpointing="off"), "causal-lm", config).gradient_checkpointing is False


def test_bf16_base_keeps_trainable_weights_in_fp32(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    from peftkit.methods.lora import wrap_with_lora

    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3, dtype=torch.bfloat16)
    model = wrap_with_lora(base, LoraSpec(r=4, alpha=8), "sequence-classification")
    prepare_model_in_place(model, plan_speed(TrainSpec(precision="bf16"), "sequence-classification"))
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert any("classifier" in n for n in trainable) and set(trainable.values()) == {torch.float32}
    assert frozen == {torch.bfloat16}


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_tiny_sft_run_logs_its_path(precision, tiny_llama_dir, runs_dir):
    from peftkit.train import train

    result = train("chatterbot-sft", overrides=[
        f"model.name={tiny_llama_dir}", "data.size=40", "train.max_steps=2", "train.batch_size=4",
        f"train.precision={precision}", f"output.runs_dir={runs_dir}", "output.run_id=r", "output.mlflow=false"])
    plan = result.metrics["speed"]
    assert plan["precision"] == precision and plan["packing"] == "off"
    assert f"speed: {precision}" in (result.run_dir / "train.log").read_text()
    assert result.metrics["train_loss"] > 0 and result.metrics["val_loss"] > 0
    assert (result.run_dir / "data" / "tokens" / "train" / "peftkit_tokens.json").is_file()
    from safetensors.torch import load_file

    saved = load_file(result.run_dir / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert json.loads((result.run_dir / "metrics.json").read_text())["train"]["speed"]["precision"] == precision


def test_yaml_on_off_reads_as_the_named_choice():
    from peftkit.recipe import load_recipe

    recipe = load_recipe("chatterbot-sft", ["train.compile=on", "train.gradient_checkpointing=off", "train.packing=off"])
    assert (recipe.train.compile, recipe.train.gradient_checkpointing, recipe.train.packing) == ("on", "off", "off")
