"""`peftkit merge RUN`: fold the adapter into the base weights and prove the result is the same model.

    result = merge("runs/quickstart-20261123-101500")
    result["max_abs_diff"]      # largest |logit(adapter) - logit(merged)| on held-out inputs

Steps: load the base in the recipe's dtype, attach the adapter, compute logits on held-out test
inputs; `merge_and_unload`; compute the same logits again; compare over real (non-padding)
positions. The merged model is saved as safetensors to `RUN/merged/` only when the difference is
within `export.parity_atol`; otherwise a ParityError names both numbers. The figures go to the
`merge` section of metrics.json either way.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from peftkit.data.prepare import load_prepared, read_split
from peftkit.data.records import to_prompt_completion
from peftkit.errors import ParityError
from peftkit.rundir import dir_bytes, open_run, require, update_metrics


def merge(run_dir: str | Path, console: Console | None = None) -> dict:
    """Merge RUN/adapter into its base, check parity, save RUN/merged; returns the `merge` metrics."""
    from peft import PeftModel

    from peftkit.loading import load_base_model, load_tokenizer

    console = console or Console(stderr=True)
    run_dir, recipe = open_run(run_dir)
    adapter_dir = require(run_dir, "adapter", "train")
    prepared = load_prepared(run_dir / "data")
    started = time.perf_counter()

    tokenizer = load_tokenizer(recipe.model)
    base = load_base_model(recipe.model, prepared.task, prepared.labels, recipe.train.seed)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()

    texts = parity_texts(tokenizer, prepared, recipe.export.parity_examples)
    tokenizer.padding_side = "right"
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=recipe.data.max_length,
                    add_special_tokens=prepared.task == "classification")
    with torch.no_grad():
        adapter_logits = model(**enc).logits  # [batch, seq, vocab] or [batch, labels]
        merged = model.merge_and_unload()  # replaces LoRA layers by merged Linear layers, in place
        merged_logits = merged(**enc).logits
    diff = (adapter_logits - merged_logits).abs()
    if diff.dim() == 3:  # causal LM: only positions that hold real tokens
        diff = diff[enc["attention_mask"].bool()]
    max_abs_diff = float(diff.max())
    result = {
        "max_abs_diff": max_abs_diff,
        "mean_abs_diff": float(diff.mean()),
        "atol": recipe.export.parity_atol,
        "passed": max_abs_diff <= recipe.export.parity_atol,
        "parity_inputs": len(texts),
        "dtype": recipe.model.dtype,
    }
    if result["passed"]:
        out = run_dir / "merged"
        merged.save_pretrained(out)  # safetensors
        tokenizer.save_pretrained(out)
        result["merged_bytes"] = dir_bytes(out)
        result["path"] = str(out)
    result["seconds"] = time.perf_counter() - started
    update_metrics(run_dir, merge=result)
    if not result["passed"]:
        raise ParityError(
            f"{run_dir}: merged model differs from adapter model by {max_abs_diff:.3g} "
            f"(tolerance export.parity_atol = {recipe.export.parity_atol:g}); merged weights not saved"
        )
    console.print(f"merged into {result['path']}: max |logit diff| {max_abs_diff:.2e} (tolerance {result['atol']:g})")
    return result


def parity_texts(tokenizer, prepared, n: int) -> list[str]:
    """Held-out inputs for the parity check: test examples (falling back to val), rendered as the
    model sees them (full chat for causal LMs, raw text for classifiers)."""
    rows = (read_split(prepared.data_dir, "test") or read_split(prepared.data_dir, "val"))[:n]
    if prepared.task == "classification":
        return [r["text"] for r in rows]
    texts = []
    for r in rows:
        pc = to_prompt_completion(r, prepared.task, prepared.instruction)
        if isinstance(pc["prompt"], str):  # completion task: plain text, no chat template
            texts.append(pc["prompt"] + pc["completion"])
            continue
        texts.append(tokenizer.apply_chat_template(pc["prompt"] + pc["completion"], tokenize=False))
    return texts
