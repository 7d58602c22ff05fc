"""`peftkit merge RUN [--requantize nf4|int8]`: fold the adapter into the base weights, prove the
result is the same model, and (optionally) quantize the merged model, saying what each step costs.

    result = merge("runs/quickstart-20261123-101500")
    result["max_abs_diff"]      # largest |logit(adapter) - logit(merged)| on held-out inputs
    result = merge(run, requantize="nf4")
    result["requantize"]        # {"max_abs_diff", "mean_abs_diff", "top1_agreement", "loss_change", "path"}

Steps: load the base in the recipe's dtype (`model.dtype`: 16 or 32 bit, never 4-bit), attach the
adapter, compute logits on held-out test inputs; `merge_and_unload`; compute the same logits again;
compare over real (non-padding) positions. The merged model is saved as safetensors to
`RUN/merged/` only when the difference is within `export.parity_atol`; otherwise a ParityError
names both numbers. The figures go to the `merge` section of metrics.json either way.

QLoRA (`method.kind: qlora`): merging into the 4-bit model is wrong — peft dequantizes each weight,
adds B·A and quantizes the sum again, so most of a small update rounds away (tests/export measure
it). The safe path above reloads the base in 16/32 bit instead. Because the user trained and
evaluated the adapter on the 4-bit base, the `dequantization` figures say how far the 16/32-bit
adapter model is from that 4-bit adapter model on the same inputs: the price of dequantizing.

`--requantize nf4|int8` loads RUN/merged with a bitsandbytes config (4-bit NF4 or 8-bit), scores the
same inputs and reports that step's own figures against the merged model (max/mean |Δlogit|, share
of positions whose top-1 prediction is unchanged, change of the held-out next-token loss), then saves
it to RUN/merged-nf4 or RUN/merged-int8 (transformers serializes both bitsandbytes formats; verified
on CPU with bitsandbytes 0.50.2, where 4-bit needs linear output sizes that are multiples of 32).

Kinds with nothing to fold (prefix, prompt, bottleneck, full) raise MergeError saying why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from peftkit.data.prepare import load_prepared, read_split
from peftkit.data.records import to_prompt_completion
from peftkit.errors import MergeError, ParityError
from peftkit.methods import MERGEABLE_KINDS
from peftkit.rundir import dir_bytes, open_run, require, update_metrics

NOT_MERGEABLE = {
    "prefix": "prefix tuning adds trained virtual tokens (key/value prefixes) as extra inputs at every layer; "
              "there is no weight matrix to fold them into. Serve RUN/adapter with its base model instead",
    "prompt": "prompt tuning adds trained virtual tokens as extra inputs; there is no weight matrix to fold them "
              "into. Serve RUN/adapter with its base model instead",
    "bottleneck": "a bottleneck adapter is a small non-linear network (down-projection, activation, up-projection) "
                  "inserted into each block; a non-linear function cannot be folded into a linear weight",
    "full": "full fine-tuning has no adapter: the whole tuned model is already in RUN/model",
}
REQUANTIZE = ("nf4", "int8")
# never quantized: causal-LM heads (Llama-style, GPT-NeoX-style) and classifier heads (Llama-style, BERT-style)
OUTPUT_HEADS = ("lm_head", "embed_out", "score", "classifier")


def check_mergeable(kind: str) -> None:
    """Raise MergeError naming the method and why it has nothing to merge; return for mergeable kinds."""
    if kind in MERGEABLE_KINDS:
        return
    reason = NOT_MERGEABLE.get(kind, f"unknown method kind (mergeable kinds: {', '.join(sorted(MERGEABLE_KINDS))})")
    raise MergeError(f"method.kind: '{kind}' cannot be merged: {reason}")


# ------------------------------------------------------------------------------------ figures


def compare_logits(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor | None) -> dict:
    """How far `other` is from `reference`: max/mean |Δlogit| and the share of positions (rows for a
    classifier) whose top-1 prediction is unchanged, over real (non-padding) positions only.

    reference, other: [batch, seq, vocab] (causal LM, with mask [batch, seq]) or [batch, labels].
    """
    ref, oth = reference.float(), other.float()
    if ref.dim() == 3 and mask is not None:
        ref, oth = ref[mask.bool()], oth[mask.bool()]  # [real positions, vocab]
    diff = (ref - oth).abs()
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "top1_agreement": float((ref.argmax(-1) == oth.argmax(-1)).float().mean()),
    }


def next_token_loss(logits: torch.Tensor, enc) -> float | None:
    """Mean next-token cross-entropy over real tokens (causal LMs; None for classifiers)."""
    if logits.dim() != 3:
        return None
    shift_logits = logits[:, :-1].float()  # [batch, seq-1, vocab]
    labels = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
    return float(torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), labels, ignore_index=-100))


def _logits(model, enc) -> torch.Tensor:
    """Logits of `model` on the batch `enc`, on the CPU (bitsandbytes may have placed the model on CUDA)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(**{k: v.to(device) for k, v in enc.items()}).logits.cpu()


def adapter_logits_on(load_base: Callable[[], torch.nn.Module], adapter_dir: str | Path, enc) -> torch.Tensor:
    """Logits of base + adapter, the base from `load_base()` (e.g. the 4-bit base a QLoRA adapter was trained on)."""
    from peft import PeftModel

    return _logits(PeftModel.from_pretrained(load_base(), adapter_dir).eval(), enc)


def dequantization_figures(quantized_logits: torch.Tensor, adapter_logits: torch.Tensor, enc) -> dict:
    """The price of merging a QLoRA adapter on a 16/32-bit base: the adapter model on that base vs the
    4-bit adapter model that was trained and evaluated (compare_logits + held-out loss of both)."""
    return {**compare_logits(quantized_logits, adapter_logits, enc.get("attention_mask")),
            "loss_4bit": next_token_loss(quantized_logits, enc), "loss_dequantized": next_token_loss(adapter_logits, enc)}


def is_quantized(model) -> bool:
    """Whether bitsandbytes layers hold the weights (4-bit or 8-bit)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
                or getattr(model, "hf_quantizer", None) is not None)


# ------------------------------------------------------------------------------------- core


@dataclass
class MergeOutcome:
    model: torch.nn.Module          # the merged model (adapter layers replaced by plain Linear layers)
    adapter_logits: torch.Tensor    # [batch, seq, vocab] or [batch, labels], base + adapter
    merged_logits: torch.Tensor     # same shape, merged model
    figures: dict                   # compare_logits(adapter, merged)


def merge_adapter(load_base: Callable[[], torch.nn.Module], adapter_dir: str | Path, enc) -> MergeOutcome:
    """Attach `adapter_dir` to the model `load_base()` returns, merge it in, and measure parity.

    The base must hold plain 16/32-bit weights: merging into a bitsandbytes-quantized model
    requantizes W + B·A and loses most of the update (MergeError says so).
    `enc` is a tokenized batch (input_ids, attention_mask).
    """
    from peft import PeftModel

    base = load_base()
    if is_quantized(base):
        raise MergeError("merge: the base model was loaded quantized (bitsandbytes); merging into quantized weights "
                         "rounds the update away. Load it in model.dtype (16/32-bit) to merge")
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    adapter_logits = _logits(model, enc)  # [batch, seq, vocab] or [batch, labels]
    with torch.no_grad():
        merged = model.merge_and_unload()  # replaces adapter layers by merged Linear layers, in place
    merged_logits = _logits(merged, enc)
    return MergeOutcome(merged, adapter_logits, merged_logits,
                        compare_logits(adapter_logits, merged_logits, enc.get("attention_mask")))


def bnb_config(kind: str, compute_dtype: torch.dtype):
    """The BitsAndBytesConfig of `--requantize`: `nf4` → 4-bit NF4 (double quantization), `int8` → LLM.int8."""
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401  (transformers only checks for it at load time)
    except ImportError:
        raise MergeError(f"--requantize {kind}: quantizing needs bitsandbytes (pip install bitsandbytes)") from None
    # Output heads stay in 16/32 bit (as transformers does for lm_head): they are small, a classifier's
    # few outputs are not a size bitsandbytes' CPU 4-bit kernel accepts, and quantizing them costs accuracy.
    skip = list(OUTPUT_HEADS)
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip)


def load_quantized(folder: str | Path, task: str, quantization, dtype: torch.dtype):
    """Load a saved model folder (RUN/merged: its config holds the labels of a classifier) with a
    bitsandbytes config, as a causal LM or a sequence classifier."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    return auto.from_pretrained(folder, quantization_config=quantization, dtype=dtype)


def _quantized_step(what: str, fn):
    """Run a bitsandbytes load/forward; a library refusal on this device becomes one MergeError line."""
    try:
        return fn()
    except (RuntimeError, ValueError, NotImplementedError, AssertionError, TypeError) as exc:
        device = "CUDA" if torch.cuda.is_available() else "CPU"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = " (bitsandbytes' CPU 4-bit kernel needs linear output sizes that are multiples of 32)" if device == "CPU" else ""
        raise MergeError(f"{what}: bitsandbytes could not run it on this {device}: {type(exc).__name__}: {first}{hint}") from None


# ------------------------------------------------------------------------------------- merge


def merge(run_dir: str | Path, console: Console | None = None, requantize: str | None = None) -> dict:
    """Merge RUN/adapter into its 16/32-bit base, check parity, save RUN/merged; with `requantize`
    ("nf4" | "int8") also quantize the merged model and save RUN/merged-<requantize>. Returns the
    `merge` section of metrics.json."""
    from peftkit.loading import DTYPES, load_base_model, load_tokenizer

    console = console or Console(stderr=True)
    run_dir, recipe = open_run(run_dir)
    kind = getattr(recipe.method, "kind", "lora")
    check_mergeable(kind)
    if requantize is not None and requantize not in REQUANTIZE:
        raise MergeError(f"--requantize: expected one of {', '.join(REQUANTIZE)}; got {requantize!r}")
    adapter_dir = require(run_dir, "adapter", "train")
    prepared = load_prepared(run_dir / "data")
    started = time.perf_counter()
    dtype = DTYPES[recipe.model.dtype]

    tokenizer = load_tokenizer(recipe.model)
    texts = parity_texts(tokenizer, prepared, recipe.export.parity_examples)
    tokenizer.padding_side = "right"
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=recipe.data.max_length,
                    add_special_tokens=prepared.task == "classification")

    quantized_logits = None
    if kind == "qlora":
        # the model the user trained and evaluated: the 4-bit base of train and eval + the adapter
        from peftkit.methods import base_quantization

        quant = base_quantization(recipe.method, "sequence-classification" if prepared.task == "classification" else "causal-lm")

        def four_bit_logits():
            return adapter_logits_on(lambda: load_base_model(recipe.model, prepared.task, prepared.labels, recipe.train.seed,
                                                             quantization=quant), adapter_dir, enc)

        quantized_logits = _quantized_step("qlora: the 4-bit adapter model", four_bit_logits)

    outcome = merge_adapter(
        lambda: load_base_model(recipe.model, prepared.task, prepared.labels, recipe.train.seed), adapter_dir, enc)
    figures, adapter_logits = outcome.figures, outcome.adapter_logits
    result = {
        "method": kind,
        **figures,
        "atol": recipe.export.parity_atol,
        "passed": figures["max_abs_diff"] <= recipe.export.parity_atol,
        "parity_inputs": len(texts),
        "dtype": recipe.model.dtype,
    }
    if quantized_logits is not None:
        # price of dequantizing: the 16/32-bit adapter model (what is merged) vs the 4-bit one (what was trained)
        result["dequantization"] = dequantization_figures(quantized_logits, adapter_logits, enc)
    if result["passed"]:
        out = run_dir / "merged"
        outcome.model.save_pretrained(out)  # safetensors
        tokenizer.save_pretrained(out)
        result["merged_bytes"] = dir_bytes(out)
        result["path"] = str(out)
    result["seconds"] = time.perf_counter() - started
    update_metrics(run_dir, merge=result)
    if not result["passed"]:
        raise ParityError(
            f"{run_dir}: merged model differs from adapter model by {result['max_abs_diff']:.3g} "
            f"(tolerance export.parity_atol = {recipe.export.parity_atol:g}); merged weights not saved"
        )
    for line in merge_summary(result):
        console.print(line)
    if requantize:  # its own step: RUN/merged stays valid (and recorded) whatever happens here
        merged_logits, outcome = outcome.merged_logits, None  # free the merged weights before loading the quantized copy
        try:
            result["requantize"] = requantize_merged(Path(result["path"]), requantize, prepared.task, dtype, enc,
                                                     merged_logits, tokenizer)
        except MergeError as exc:
            result["requantize"] = {"kind": requantize, "error": str(exc)}
            raise
        finally:
            result["seconds"] = time.perf_counter() - started
            update_metrics(run_dir, merge=result)
        console.print(merge_summary(result)[-1])
    return result


def requantize_merged(merged_dir: Path, kind: str, task: str, dtype: torch.dtype, enc, merged_logits: torch.Tensor,
                      tokenizer) -> dict:
    """Quantize RUN/merged with bitsandbytes (`nf4` or `int8`), score `enc`, save RUN/merged-<kind>.

    Returns {"kind", "max_abs_diff", "mean_abs_diff", "top1_agreement", "loss_merged", "loss_quantized",
    "loss_change", "path", "bytes"} — the figures of this step alone (quantized vs merged)."""
    quant = bnb_config(kind, dtype)
    model = _quantized_step(f"--requantize {kind}", lambda: load_quantized(merged_dir, task, quant, dtype).eval())
    logits = _quantized_step(f"--requantize {kind}", lambda: _logits(model, enc))
    figures = {"kind": kind, **compare_logits(merged_logits, logits, enc.get("attention_mask"))}
    loss_merged, loss_quant = next_token_loss(merged_logits, enc), next_token_loss(logits, enc)
    if loss_merged is not None:
        figures |= {"loss_merged": loss_merged, "loss_quantized": loss_quant, "loss_change": loss_quant - loss_merged}
    out = merged_dir.parent / f"merged-{kind}"
    _quantized_step(f"--requantize {kind}: saving", lambda: model.save_pretrained(out))
    tokenizer.save_pretrained(out)
    figures |= {"path": str(out), "bytes": dir_bytes(out)}
    return figures


def merge_summary(result: dict) -> list[str]:
    """The lines `peftkit merge` prints: one per step, each with its own cost."""
    from peftkit.resources import human_bytes

    lines = [f"merged ({result['dtype']}) into {result['path']}: max |logit diff| {result['max_abs_diff']:.2e} "
             f"(tolerance {result['atol']:g}), mean {result['mean_abs_diff']:.2e}"]
    d = result.get("dequantization")
    if d:
        lines.append(f"dequantization (4-bit → {result['dtype']} adapter model): max |logit diff| {d['max_abs_diff']:.3g}, "
                     f"mean {d['mean_abs_diff']:.3g}, top-1 agreement {d['top1_agreement']:.1%}"
                     + (f", loss {d['loss_4bit']:.4f} → {d['loss_dequantized']:.4f}" if d.get("loss_4bit") is not None else ""))
    q = result.get("requantize")
    if q:
        lines.append(f"requantized {q['kind']} into {q['path']} ({human_bytes(q['bytes'])} vs {human_bytes(result['merged_bytes'])}): "
                     f"max |logit diff| {q['max_abs_diff']:.3g}, mean {q['mean_abs_diff']:.3g}, "
                     f"top-1 agreement {q['top1_agreement']:.1%}"
                     + (f", held-out loss {q['loss_merged']:.4f} → {q['loss_quantized']:.4f} ({q['loss_change']:+.4f})"
                        if "loss_change" in q else ""))
    return lines


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
