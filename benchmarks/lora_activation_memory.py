"""Bytes kept for backward by one training forward of a LoRA model: peft as it comes vs peftkit's slimming.

    python benchmarks/lora_activation_memory.py                 # smollm2-135m, 8 x 256 tokens
    python benchmarks/lora_activation_memory.py --tokens 128 --dropout 0.1

Each row is one forward pass in train mode under bf16 autocast (frozen base in bf16, LoRA r=16
all-linear in fp32, as peftkit trains on the bf16 path) with `torch.autograd.graph.saved_tensors_hooks`
counting every distinct storage autograd keeps, grouped by the module that saved it. Rows:
  peft            peft's LoRA layer as it is (input cast to fp32, nn.Dropout);
  uncast          + `adapter_inputs_uncast` (peft's cast_input_dtype switch off under autocast);
  uncast+fused    + `fuse_lora_dropout_in_place` (peftkit's default);
  no dropout      lora_dropout 0 and uncast: the floor the fused dropout should reach.
Ratios are against the `peft` row, measured in the same process. Memory only: no timing here.
"""

from __future__ import annotations

import argparse
import collections

import torch


def saved_bytes(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[int, collections.Counter]:
    """(total, by module type) bytes of distinct storages saved for backward by one forward."""
    stack = ["model"]
    hooks = []
    for module in model.modules():
        if not list(module.children()) or type(module).__name__.endswith(("Attention", "MLP", "RMSNorm")):
            hooks.append(module.register_forward_pre_hook(lambda m, i: stack.append(type(m).__name__) and None))
            hooks.append(module.register_forward_hook(lambda m, i, o: stack.pop() and None))
    seen, by = set(), collections.Counter()

    def pack(t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key not in seen and not isinstance(t, torch.nn.Parameter):
            seen.add(key)
            by[f"{stack[-1]} {str(t.dtype).removeprefix('torch.')}"] += t.untyped_storage().nbytes()
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, attention_mask=mask)
    del out
    for h in hooks:
        h.remove()
    return sum(by.values()), by


def build(dropout: float):
    from peft import LoraConfig, get_peft_model

    from peftkit.loading import load_causal_lm
    from peftkit.recipe import ModelSpec

    model = load_causal_lm(ModelSpec(name="smollm2-135m", dtype="bfloat16"))
    model.set_attn_implementation("sdpa")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear"))
    model.train()
    return model


def main() -> None:
    from peftkit.train.adapter_memory import adapter_inputs_uncast, fuse_lora_dropout_in_place

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    ids = torch.randint(0, 49_000, (args.batch, args.tokens))
    mask = torch.ones_like(ids)
    gib = 1024**3

    rows = []
    model = build(args.dropout)
    rows.append(("peft", *saved_bytes(model, ids, mask)))
    with adapter_inputs_uncast(model):
        rows.append(("uncast", *saved_bytes(model, ids, mask)))
        fused = fuse_lora_dropout_in_place(model)
        rows.append(("uncast+fused", *saved_bytes(model, ids, mask)))
    del model
    model = build(0.0)
    with adapter_inputs_uncast(model):
        rows.append(("no dropout", *saved_bytes(model, ids, mask)))

    print(f"smollm2-135m, LoRA r=16 all-linear, dropout {args.dropout}, {args.batch} x {args.tokens} tokens, "
          f"bf16 autocast; {fused} dropout+lora_A pairs fused")
    base = rows[0][1]
    for name, total, by in rows:
        print(f"{name:14s} {total / gib:6.2f} GiB  {total / base:5.2f}x  "
              f"{total / (args.batch * args.tokens) / 1024:6.1f} KiB/token")
    print("by module (peft row -> uncast+fused row), MiB:")
    for key in sorted(set(rows[0][2]) | set(rows[2][2]), key=lambda k: -rows[0][2].get(k, 0)):
        print(f"  {key:32s} {rows[0][2].get(key, 0) / 2**20:8.1f} -> {rows[2][2].get(key, 0) / 2**20:8.1f}")


if __name__ == "__main__":
    main()
