"""Merge: parity for LoRA runs, the QLoRA-safe path (reload 16/32-bit, never merge into 4-bit),
requantization with bitsandbytes, and the refusals for methods with nothing to merge."""

import json

import pytest
import torch
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.methods import MERGEABLE_KINDS
from peftkit.export.merge import (
    NOT_MERGEABLE,
    MergeError,
    check_mergeable,
    adapter_logits_on,
    compare_logits,
    dequantization_figures,
    merge_adapter,
)

runner = CliRunner()
TEXTS = ["Book 2 containers from Hamburg to Shanghai on 3 May.", "The carrier is Maersk; port of loading Rotterdam.",
         "Hello, how are you today?"]


@pytest.mark.parametrize("kind", sorted(NOT_MERGEABLE))
def test_kinds_with_nothing_to_merge_say_why(kind):
    with pytest.raises(MergeError) as exc:
        check_mergeable(kind)
    message = str(exc.value)
    assert message.startswith(f"method.kind: '{kind}' cannot be merged: ") and "\n" not in message
    assert {"prefix": "virtual tokens", "prompt": "virtual tokens", "bottleneck": "non-linear",
            "full": "RUN/model"}[kind] in message


@pytest.mark.parametrize("kind", sorted(MERGEABLE_KINDS))
def test_mergeable_kinds_pass(kind):
    assert check_mergeable(kind) is None


def _train(tiny_llama_dir, runs_dir, run_id, extra=()):
    sets = [f"model.name={tiny_llama_dir}", "train.max_steps=2", "data.size=16", "eval.max_new_tokens=4",
            f"output.runs_dir={runs_dir}", f"output.run_id={run_id}", "output.mlflow=false", "train.lr=1e-2", *extra]
    result = runner.invoke(app, ["train", "quickstart", *[a for s in sets for a in ("--set", s)]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return runs_dir / run_id


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_lora_merge_then_requantize_reports_each_step(tiny_llama_dir, runs_dir, quant):
    from transformers import AutoModelForCausalLM

    run = _train(tiny_llama_dir, runs_dir, f"rq-{quant}")
    result = runner.invoke(app, ["merge", str(run), "--requantize", quant], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    merge = json.loads((run / "metrics.json").read_text())["merge"]
    assert merge["passed"] and merge["max_abs_diff"] <= merge["atol"] and merge["method"] == "lora"
    assert "dequantization" not in merge  # a LoRA run was trained on the 16/32-bit base
    q = merge["requantize"]
    assert q["kind"] == quant and q["max_abs_diff"] > merge["max_abs_diff"] and q["max_abs_diff"] > 0
    assert 0.0 <= q["top1_agreement"] <= 1.0 and q["loss_change"] == pytest.approx(q["loss_quantized"] - q["loss_merged"])
    assert (run / f"merged-{quant}" / "model.safetensors").is_file()
    assert q["bytes"] < merge["merged_bytes"]  # quantized linear layers are smaller on disk
    reloaded = AutoModelForCausalLM.from_pretrained(run / f"merged-{quant}")  # serialized with its quantization config
    assert getattr(reloaded, f"is_loaded_in_{'4bit' if quant == 'nf4' else '8bit'}")
    assert "requantized" in result.output


def test_unknown_requantize_is_one_red_line(tiny_llama_dir, runs_dir):
    import subprocess
    import sys

    run = _train(tiny_llama_dir, runs_dir, "bad-q")
    proc = subprocess.run([sys.executable, "-m", "peftkit.cli", "merge", str(run), "--requantize", "fp8"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: --requantize: expected one of nf4, int8; got 'fp8'"  # no traceback
    assert not (run / "merged").exists()


def test_qlora_safe_merge_is_exact_and_naive_4bit_merge_is_not(tiny_llama_dir, tmp_path):
    """Train LoRA on a 4-bit base; the safe path (fp32 reload) merges within atol, merging into the
    4-bit model itself moves the logits far more (W + B·A is requantized)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    load4 = lambda: AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=quant, dtype=torch.float32)  # noqa: E731
    load32 = lambda: AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)  # noqa: E731
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.padding_side = "right"
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)

    torch.manual_seed(0)
    model = get_peft_model(load4(), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    losses = []
    for _ in range(3):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # the adapter learned something, so there is something to merge
    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(adapter_dir)

    trained = PeftModel.from_pretrained(load4(), adapter_dir).eval()  # what the user trained and evaluated
    with torch.no_grad():
        trained_logits = trained(**enc).logits
        naive = trained.merge_and_unload()  # peft: dequantize, add B·A, quantize again
        naive_logits = naive(**enc).logits
    naive_err = compare_logits(trained_logits, naive_logits, enc["attention_mask"])

    safe = merge_adapter(load32, adapter_dir, enc)
    dequant = dequantization_figures(adapter_logits_on(load4, adapter_dir, enc), safe.adapter_logits, enc)
    print(f"naive 4-bit merge max|Δ| {naive_err['max_abs_diff']:.3g} mean {naive_err['mean_abs_diff']:.3g}; "
          f"safe fp32 merge max|Δ| {safe.figures['max_abs_diff']:.3g}; dequantization {dequant}")
    assert safe.figures["max_abs_diff"] <= 1e-3  # export.parity_atol default
    assert naive_err["max_abs_diff"] > 1e-3 and naive_err["max_abs_diff"] > 100 * safe.figures["max_abs_diff"]
    assert dequant["max_abs_diff"] > 0  # the 4-bit and fp32 adapter models are different models
    assert dequant["loss_4bit"] != dequant["loss_dequantized"] and 0 < dequant["top1_agreement"] <= 1

    with pytest.raises(MergeError, match="loaded quantized"):
        merge_adapter(load4, adapter_dir, enc)


def test_classifier_requantize_keeps_its_head_in_full_precision(tiny_bert_dir, runs_dir):
    """A classifier head has a handful of outputs: bitsandbytes' CPU 4-bit kernel refuses such sizes
    and quantizing it costs accuracy, so the head stays a plain Linear layer."""
    from transformers import AutoModelForSequenceClassification

    sets = [f"model.name={tiny_bert_dir}", "train.max_steps=2", "data.size=60", f"output.runs_dir={runs_dir}",
            "output.run_id=cls", "output.mlflow=false"]
    result = runner.invoke(app, ["train", "bbc-news-lora", *[a for s in sets for a in ("--set", s)]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = runs_dir / "cls"
    result = runner.invoke(app, ["merge", str(run), "--requantize", "nf4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    q = json.loads((run / "metrics.json").read_text())["merge"]["requantize"]
    assert q["max_abs_diff"] > 0 and "loss_change" not in q  # no next-token loss for a classifier
    reloaded = AutoModelForSequenceClassification.from_pretrained(run / "merged-nf4")
    assert type(reloaded.classifier) is torch.nn.Linear
    assert type(reloaded.bert.encoder.layer[0].attention.self.query).__name__ == "Linear4bit"


def _schema_has(method: dict) -> bool:
    """Whether this checkout's recipe schema accepts a `method:` block (kinds arrive with the methods branch)."""
    from peftkit.errors import RecipeError
    from peftkit.recipe import load_recipe

    try:
        load_recipe({"name": "p", "model": {"name": "x"}, "data": {"dataset": "shipping-emails"}, "method": method})
    except RecipeError:
        return False
    return True


def test_qlora_run_merges_on_the_full_precision_base(tiny_llama_dir, runs_dir):
    if not _schema_has({"kind": "qlora"}):
        pytest.skip("this checkout's recipe schema has no method.kind qlora yet")
    from transformers import AutoModelForCausalLM

    run = _train(tiny_llama_dir, runs_dir, "ql2", ["method={kind: qlora, r: 8, alpha: 16}"])
    result = runner.invoke(app, ["merge", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    merge = json.loads((run / "metrics.json").read_text())["merge"]
    assert merge["method"] == "qlora" and merge["passed"] and merge["max_abs_diff"] <= merge["atol"]
    d = merge["dequantization"]  # the 4-bit adapter model (as trained) vs the float32 one (as merged)
    assert d["max_abs_diff"] > merge["max_abs_diff"] and d["loss_4bit"] != d["loss_dequantized"]
    assert "dequantization (4-bit" in result.output
    merged = AutoModelForCausalLM.from_pretrained(run / "merged")
    assert not getattr(merged, "is_loaded_in_4bit", False) and merged.dtype == torch.float32


@pytest.mark.parametrize("kind", ["prefix", "prompt"])
def test_virtual_token_run_merge_is_one_red_line(tiny_llama_dir, runs_dir, kind):
    if not _schema_has({"kind": kind}):
        pytest.skip(f"this checkout's recipe schema has no method.kind {kind} yet")
    import subprocess
    import sys

    run = _train(tiny_llama_dir, runs_dir, kind, [f"method={{kind: {kind}, num_virtual_tokens: 4}}"])
    proc = subprocess.run([sys.executable, "-m", "peftkit.cli", "merge", str(run)], capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: method.kind: '{kind}' cannot be merged")
    assert not (run / "merged").exists()
