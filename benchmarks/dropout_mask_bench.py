"""Dropout-mask cost: PyTorch's dropout against the masks of peftkit.train.dropout, in one process.

    env PYTHONPATH=src .venv/bin/python benchmarks/dropout_mask_bench.py [--threads 2] [--repeats 30]

For the shapes of a LoRA layer's input in the SFT benchmark (smollm2-135m: [tokens, 576] for q/k/v/o/
gate/up, [tokens, 1536] for down; 480 tokens is a length-grouped batch of 8 chatterbot conversations)
and of the classification benchmark (minilm-l6, 16 x 128 tokens: [2048, 384], and one layer's
attention weights, [16, 12, 128, 128]), times applying one mask to x:
(a) `F.dropout(x, p)` (what peft's lora_dropout runs: one bernoulli_ draw per element),
(b) the generator's mask (four 16-bit draws per 64-bit random word, then x * mask * scale),
(c) the compiled hash kernel (`compile_mask_kernel`; hash, compare and scale in one pass),
and the whole fused forward + backward of one LoRA-A product (`_DropoutLinearFn`) with each mask
against peft's unfused dropout + linear. Prints times per call, the ratios to (a) / the unfused
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

    import peftkit.train.dropout as dropout
    from peftkit.train.adapter_memory import _DropoutLinearFn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    p = args.p
    ok, line = dropout.compile_mask_kernel()
    print(line)
    kernel = dropout._kernel
    print(f"{'shape':>18} {'dtype':>9} | {'F.dropout':>9} {'generator':>9} {'kernel':>8} {'gen/kern':>8} "
          f"{'torch/kern':>10} | {'unfused':>8} {'fused gen':>9} {'fused kern':>10} | drop rate torch / gen / kernel")
    for dtype in (torch.float32, torch.bfloat16):
        for shape in ((480, 576), (480, 1536), (2048, 576), (2048, 384), (16, 12, 128, 128)):
            x = torch.randn(*shape, dtype=dtype)
            t_torch = per_call(lambda: F.dropout(x, p, True), args.repeats)
            dropout._kernel = None
            t_gen = per_call(lambda: dropout.SeededMask(p, 1234).apply(x), args.repeats)
            rate_gen = 1.0 - dropout.SeededMask(p, 99).keep(x).float().mean().item()
            dropout._kernel = kernel
            t_kern = per_call(lambda: dropout.SeededMask(p, 1234).apply(x), args.repeats) if ok else float("nan")
            rate_kern = 1.0 - dropout.SeededMask(p, 99).keep(x).float().mean().item() if ok else float("nan")
            rate_torch = (F.dropout(torch.ones(shape), p, True) == 0).float().mean().item()
            fused = ""
            if len(shape) == 2:
                w = torch.randn(16, shape[1], dtype=torch.float32, requires_grad=True)
                xg = x.clone().requires_grad_()

                def unfused():
                    F.linear(F.dropout(xg, p, True), w.to(dtype)).float().sum().backward()

                def fused_call():
                    _DropoutLinearFn.apply(xg, w, p).float().sum().backward()

                t_unfused = per_call(unfused, args.repeats)
                dropout._kernel = None
                t_fused_gen = per_call(fused_call, args.repeats)
                dropout._kernel = kernel
                t_fused_kern = per_call(fused_call, args.repeats) if ok else float("nan")
                fused = f"{t_unfused * 1e3:6.2f}ms {t_fused_gen * 1e3:7.2f}ms {t_fused_kern * 1e3:8.2f}ms"
            else:
                fused = f"{'':>8} {'':>9} {'':>10}"
            print(f"{str(shape):>18} {str(dtype).split('.')[-1]:>9} | {t_torch * 1e3:7.2f}ms {t_gen * 1e3:7.2f}ms "
                  f"{t_kern * 1e3:6.2f}ms {t_gen / t_kern:7.2f}x {t_torch / t_kern:9.2f}x | {fused} | "
                  f"{rate_torch:.4f} / {rate_gen:.4f} / {rate_kern:.4f} (p={p}, realised {dropout.drop_rate(p):.7f})")


if __name__ == "__main__":
    main()
