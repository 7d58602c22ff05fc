"""Step time of peftkit's SFT path by variant: sdpa vs eager, torch.compile, and the LoRA memory savings.

    flock /tmp/peftkit-measure.lock env PYTHONPATH=src .venv/bin/python benchmarks/attention_compile_probe.py
    ... --steps 6 --threads 2 --variants sdpa,eager,sdpa+compile,sdpa+unfused,sdpa+unfused+cast

A variant is an attention kernel plus options: `+compile` (torch.compile of the decoder, dynamic
shapes), `+unfused` (peft's own dropout module instead of the dropout fused into lora_A), `+cast`
(peft's fp32 copy of every LoRA input kept, i.e. adapter_inputs_uncast off), `+nodrop` (LoRA dropout
0 instead of 0.05: what dropout costs at all), `+fp32` (the fp32 path: base in fp32, no autocast,
what `auto` picks on a CPU without avx512_bf16/AMX).

One process, one model per variant, each trained on the same batches: smollm2-135m in bf16 with LoRA
r=16 all-linear as `peftkit train` sets it up (fp32 adapters, dropout fused into lora_A, inputs
uncast, bf16 autocast, labelled-positions loss), chatterbot conversations in padded batches of 8
grouped by length (peftkit's default). For each variant: the first step (compilation included),
then the steady rate over the remaining steps, run twice in alternation (A B C A B C) so that a
noisy neighbour hits every variant alike; the table gives each variant's tokens/s as a ratio to
sdpa's. Sets AUTO_ATTENTION / AUTO_COMPILE in peftkit.train.speed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def batches(steps: int, batch_size: int = 8, max_length: int = 256) -> list[dict]:
    """`steps` padded batches of chatterbot conversations (peftkit's tokens and length grouping)."""
    import torch

    from peftkit.catalog.models import resolve_model
    from peftkit.data.prepare import prepare_data, read_split
    from peftkit.data.records import to_prompt_completion
    from peftkit.loading import load_tokenizer
    from peftkit.recipe import load_recipe
    from peftkit.train.sampling import LengthBatchSampler
    from peftkit.train.tokens import sft_token_dataset

    recipe = load_recipe({"name": "probe", "model": {"name": "smollm2-135m"}, "data": {"dataset": "chatterbot"},
                          "output": {"mlflow": False}})
    tokenizer = load_tokenizer(recipe.model)
    with tempfile.TemporaryDirectory() as tmp:
        prep = prepare_data(recipe.data, Path(tmp), tokenizer=tokenizer, model_source=resolve_model("smollm2-135m"))
        pairs = [to_prompt_completion(r, prep.task, prep.instruction) for r in read_split(prep.data_dir, "train")]
    ds = sft_token_dataset(pairs, tokenizer, max_length)
    sampler = LengthBatchSampler([len(x) for x in ds["input_ids"]], batch_size, generator=torch.Generator().manual_seed(0))
    out = []
    for group in sampler.batches()[:steps]:
        rows = ds[group]
        width = max(map(len, rows["input_ids"]))
        pad = lambda seqs, value: torch.tensor([s + [value] * (width - len(s)) for s in seqs])  # noqa: E731
        out.append({"input_ids": pad(rows["input_ids"], 0), "labels": pad(rows["labels"], -100),
                    "attention_mask": pad([[1] * len(s) for s in rows["input_ids"]], 0)})
    return out


def build(variant: str):
    """smollm2-135m + LoRA as peftkit.train prepares it, its optimizer, and the step function."""
    import torch
    from transformers import AutoModelForCausalLM

    from peftkit.catalog.models import resolve_model
    from peftkit.methods import apply_method
    from peftkit.recipe import LoraSpec
    from peftkit.train.adapter_memory import adapter_inputs_uncast, fuse_lora_dropout_in_place
    from peftkit.train.loss import labelled_positions_loss
    from peftkit.train.speed import keep_trainable_fp32

    attention, *options = variant.split("+")
    torch.manual_seed(0)
    bf16 = "fp32" not in options
    base = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"), attn_implementation=attention,
                                                dtype=torch.bfloat16 if bf16 else torch.float32)
    dropout = 0.0 if "nodrop" in options else 0.05
    model = apply_method(base, LoraSpec(r=16, alpha=32, dropout=dropout, target_modules="all-linear"), "causal-lm")
    keep_trainable_fp32(model)
    if "unfused" not in options:
        fuse_lora_dropout_in_place(model)
    if "compile" in options:
        model.get_base_model().get_decoder().compile(dynamic=True)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(batch: dict) -> None:
        with (adapter_inputs_uncast(model, active=bf16 and "cast" not in options),
              torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)):
            loss = labelled_positions_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round (after the first step)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="sdpa,eager,sdpa+compile,sdpa+unfused,sdpa+unfused+cast")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    torch.set_num_threads(args.threads)
    console = Console()
    data = batches(args.steps + 1)
    tokens = sum(int(b["attention_mask"].sum()) for b in data[1:])
    variants = [v.strip() for v in args.variants.split(",")]
    steps, first, rates = {}, {}, {v: [] for v in variants}
    for name in variants:
        steps[name] = build(name)
        started = time.perf_counter()
        steps[name](data[0])  # first step: compilation, allocator warm-up
        first[name] = time.perf_counter() - started
        console.print(f"{name}: first step {first[name]:.1f} s")
    for round_ in range(args.rounds):
        for name in variants:
            started = time.perf_counter()
            for batch in data[1:]:
                steps[name](batch)
            rates[name].append(tokens / (time.perf_counter() - started))
            console.print(f"round {round_ + 1} {name}: {rates[name][-1]:.0f} tokens/s")

    table = Table(title=f"SFT step, smollm2-135m LoRA r=16, {args.steps} steps × {args.rounds} rounds, "
                        f"{args.threads} threads")
    for col in ("variant", "first step s", "tokens/s (median of rounds)", "vs sdpa"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    baseline = statistics.median(rates[variants[0]])
    for name in variants:
        rate = statistics.median(rates[name])
        table.add_row(name, f"{first[name]:.1f}", f"{rate:.0f}", f"{rate / baseline:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
