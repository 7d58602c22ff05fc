"""Dropout-mask cost: PyTorch's dropout against the mask peftkit's fused LoRA dropout draws, in one process.

    env PYTHONPATH=src .venv/bin/python benchmarks/dropout_mask_bench.py [--threads 2] [--repeats 30]

For the shapes of a LoRA layer's input in the SFT benchmark (smollm2-135m: [tokens, 576] for q/k/v/o/
gate/up, [tokens, 1536] for down; 480 tokens is a length-grouped batch of 8 chatterbot conversations),
times (a) `F.dropout(x, 0.05)` (what peft's lora_dropout runs: one bernoulli_ draw per element),
(b) the keep mask of `peftkit.train.adapter_memory` (four 16-bit draws per 64-bit random word), and
(c) the whole fused forward + backward of one LoRA-A product (`_DropoutLinearFn`, two mask draws)
against peft's unfused dropout + linear. Prints times per call and the ratios to (a) / the unfused
product measured in the same run, and the realised drop rate of each mask.
"""

from __future__ import annotations

import argparse
import time


def per_call(fn, repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--p", type=float, default=0.05)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from peftkit.train.adapter_memory import _DropoutLinearFn, keep_mask, drop_rate

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    p = args.p
    print(f"{'shape':>14} {'dtype':>9} | {'F.dropout':>10} {'our mask':>9} {'ratio':>6} | "
          f"{'unfused fwd+bwd':>15} {'fused fwd+bwd':>13} {'ratio':>6} | drop rate torch / ours")
    for dtype in (torch.float32, torch.bfloat16):
        for shape in ((480, 576), (480, 1536), (2048, 576)):
            x = torch.randn(*shape, dtype=dtype)
            w = torch.randn(16, shape[1], dtype=torch.float32, requires_grad=True)
            t_torch = per_call(lambda: F.dropout(x, p, True), args.repeats)
            t_ours = per_call(lambda: keep_mask(x, p, 1234), args.repeats)
            xg = x.clone().requires_grad_()

            def unfused():
                F.linear(F.dropout(xg, p, True), w.to(dtype)).float().sum().backward()

            def fused():
                _DropoutLinearFn.apply(xg, w, p).float().sum().backward()

            t_unfused = per_call(unfused, args.repeats)
            t_fused = per_call(fused, args.repeats)
            rate_torch = (F.dropout(torch.ones(shape), p, True) == 0).float().mean().item()
            rate_ours = 1.0 - keep_mask(x, p, 99).float().mean().item()
            print(f"{str(shape):>14} {str(dtype).split('.')[-1]:>9} | {t_torch * 1e3:8.2f}ms {t_ours * 1e3:7.2f}ms "
                  f"{t_torch / t_ours:5.2f}x | {t_unfused * 1e3:13.2f}ms {t_fused * 1e3:11.2f}ms "
                  f"{t_unfused / t_fused:5.2f}x | {rate_torch:.4f} / {rate_ours:.4f} (p={p}, realised {drop_rate(p):.7f})")


if __name__ == "__main__":
    main()
