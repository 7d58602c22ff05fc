"""Dropout masks at the machine's speed: drawn from a seed in one compiled kernel, or 4x cheaper than PyTorch's.

    compile_mask_kernel()                       # once per process (run.py): torch.compile's C++ kernel, or why not
    mask = SeededMask(p=0.1, seed=draw_seed())  # the same mask for the same seed, forward and backward
    y = mask.apply(x)                           # x with dropped elements zeroed, kept ones x 1/(1 - rate)
    n = fast_dropout_in_place(model)            # the model's own nn.Dropout layers draw their masks this way

PyTorch's CPU dropout (`bernoulli_`) draws one Mersenne-Twister number per element and converts it:
7-9 ns an element on an AVX2 CPU whatever the dtype, which for a LoRA step on a small model is
more than a sixth of the step (stop 12: 0.50 s of a 3.1 s fp32 smollm2-135m step, torch.profiler).

Two ways to draw a mask here, with the same drop rate (p rounded to a multiple of 1/65536: 0.05 ->
0.0500031; kept elements are scaled by 1 / (1 - that rate), so the expectation is unchanged):
- the kernel (CPU, when `compile_mask_kernel()` succeeded): each element's keep bit is a hash of its
  index and the seed (Wellons' lowbias32, twice, 32-bit integers), and `torch.compile` turns hash,
  compare and multiply into one vectorised loop over the tensor on all threads. Nothing is stored:
  backward hashes the same indices again. On the 2-core AVX-512 CPU, one [2048, 384] bf16 mask
  applied: 0.27 ms, against 2.38 ms for the generator below and 5.25 ms for F.dropout's
  `bernoulli_`; a [16, 12, 128, 128] one 0.82 / 8.98 / 21.19 ms (stop 20,
  `benchmarks/dropout_mask_bench.py --p 0.1`, 2 threads; stop 19's kernel ran on one thread and
  vectorised its indices poorly: 0.68 and 2.70 ms on the same day).
- the generator (without a C++ compiler, and on CUDA): 16-bit random integers, four from each 64-bit
  word of a seeded torch.Generator; an element is dropped when its integer falls below a threshold.

Used by the fused LoRA dropout (`train.adapter_memory`), by the attention of `train.attention`
(dropout of the attention weights), and by `MaskDropout`, which replaces the model's own
`nn.Dropout` layers while training (BERT-style encoders have four per layer); with the generator
it keeps the bool mask for backward as PyTorch's dropout does, with the kernel only the seed.
"""

from __future__ import annotations

import functools
import math
import time

import torch
from torch import nn

_MASK_LEVELS = 1 << 16


def drop_rate(p: float) -> float:
    """The drop probability the mask realises for `p` (p rounded to a multiple of 1/65536)."""
    return round(p * _MASK_LEVELS) / _MASK_LEVELS


def keep_scale(p: float) -> float:
    """1 / (1 - drop_rate(p)): what kept elements are multiplied by, so the expectation is unchanged."""
    return 1.0 / (1.0 - drop_rate(p))


def keep_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Bool keep mask of x's shape, P(False) = drop_rate(p), reproducible from `seed` on x's device."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None, generator=generator)
    threshold = -(_MASK_LEVELS // 2) + round(p * _MASK_LEVELS)  # uniform int16 values below it: dropped
    return words.view(torch.int16)[:n].view(x.shape) >= threshold


def draw_seed() -> int:
    """A seed for one mask, from the global RNG (seeded runs repeat)."""
    return int(torch.randint(0, 2**62, (1,)).item())


# ---------------------------------------------------------------------------------- the hashed mask


def _lowbias32(h: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 integer hash on int32 (logical right shifts as masked arithmetic ones)."""
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * 0x7FEB352D
    h = h ^ ((h >> 15) & 0x1FFFF)
    h = h * -2073254261  # 0x846CA68B as a signed 32-bit integer
    return h ^ ((h >> 16) & 0xFFFF)


_WEYL = -1640531535  # 0x9E3779B1 as a signed 32-bit integer


def hashed_dropout(flat: torch.Tensor, seed: torch.Tensor, threshold: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """1-D `flat` with element i zeroed where hash(i, seed) < threshold, the others times `scale`.

    The eager reference of the compiled kernel (the tests hold them equal bit for bit). seed and
    threshold are 0-d int32 tensors and scale a 0-d fp32 one, so that new values are new inputs,
    not new compilations.
    """
    index = torch.arange(flat.numel(), device=flat.device, dtype=torch.int32)
    h = _lowbias32(_lowbias32(index * _WEYL + seed) ^ seed)  # a Weyl sequence over the indices, hashed twice
    # in fp32 and rounded once, as eager `x * scale` computes it (a bf16 x fp32 product is not vectorised)
    return (flat.float() * torch.where(h >= threshold, scale, 0.0)).to(flat.dtype)


def hashed_dropout_rows(rows: torch.Tensor, column_weyl: torch.Tensor, row_step: torch.Tensor, seed: torch.Tensor,
                        threshold: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """hashed_dropout of `rows.reshape(-1)`, computed over the 2-D [rows, columns] view: what is compiled.

    Element (r, c) has flat index i = r * columns + c, so its Weyl value i * 0x9E3779B1 is
    r * row_step + column_weyl[c] (32-bit wrap-around). The column values are a small input and the
    row term one scalar per row: inductor vectorises `arange` poorly (one scalar per lane), and this
    form makes the mask 1.6x faster with the same bits (stop 20, 2 threads, bf16: [2048, 384]
    0.34 -> 0.21 ms, [16, 12, 128, 128] 1.31 -> 0.76 ms).
    """
    row_weyl = torch.arange(rows.shape[0], device=rows.device, dtype=torch.int32) * row_step
    h = _lowbias32(_lowbias32(row_weyl[:, None] + column_weyl[None, :] + seed) ^ seed)
    return (rows.float() * torch.where(h >= threshold, scale, 0.0)).to(rows.dtype)


_kernel = None  # _apply_rows with the compiled hashed_dropout_rows, once compile_mask_kernel() succeeded
_weyl_columns: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _columns(t: torch.Tensor) -> int:
    """How many columns the 2-D view of t has: a power of two up to 4096 that divides its size, else
    its last dimension (a vectorised inner loop needs some width; 1 still works, slowly)."""
    columns = math.gcd(t.numel(), 4096)
    if columns < 64 and t.dim() > 0 and t.shape[-1] <= 1 << 16:
        columns = t.shape[-1]
    return max(columns, 1)


def _apply_rows(compiled, t: torch.Tensor, seed: torch.Tensor, threshold: torch.Tensor,
                scale: torch.Tensor) -> torch.Tensor:
    """`compiled` (hashed_dropout_rows) applied to t of any shape: hashed_dropout(t.reshape(-1), ...) viewed as t."""
    columns = _columns(t)
    key = (columns, t.device)
    if key not in _weyl_columns:
        weyl = torch.tensor(_WEYL, dtype=torch.int32, device=t.device)
        _weyl_columns[key] = (torch.arange(columns, dtype=torch.int32, device=t.device) * weyl, weyl * columns)
    column_weyl, row_step = _weyl_columns[key]
    rows = t.reshape(-1, columns).detach()  # not a view: dynamo would guard on (and recompile for) its base's strides
    return compiled(rows, column_weyl, row_step, seed, threshold, scale).view(t.shape)


def compile_kernel(fn):
    """torch.compile for an elementwise CPU kernel over tensors of any size, run on all threads.

    Inductor decides at compile time whether a loop is split over threads; with a dynamic size it
    kept the loop on one thread (`cpp.dynamic_threads` leaves the split to OpenMP at run time;
    stop 20, 2 threads: a [16, 12, 128, 128] bf16 mask 2.45 ms -> 1.28 ms, a minilm-l6 16 x 128
    classification step 0.60 -> 0.53 s).
    """
    return torch.compile(fn, dynamic=True, options={"cpp.dynamic_threads": True})


def compile_mask_kernel(dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float32)) -> tuple[bool, str]:
    """Compile the hashed mask for CPU tensors of `dtypes`; returns (ok, a line for the run log).

    torch.compile needs a C++ compiler at run time; without one (or with any other failure) the
    generator mask stays in use and the line says why. Compiled with dynamic sizes, so that every
    tensor of a dtype reuses one kernel, and checked against the eager `hashed_dropout` on one.
    """
    global _kernel
    if _kernel is not None:
        return True, "speed: dropout masks hashed from a seed in one compiled kernel (train.dropout)"
    started = time.perf_counter()
    try:
        kernel = functools.partial(_apply_rows, compile_kernel(hashed_dropout_rows))
        for dtype in dtypes:
            args = (torch.ones(3, 8192, dtype=dtype), *_kernel_args(0.5, 12345, 2.0))  # [6, 4096]: no size 1 to specialise on
            with torch.no_grad():  # as SeededMask calls it: no autograd, so one guard set for all calls
                same = torch.equal(kernel(*args).reshape(-1), hashed_dropout(args[0].reshape(-1), *args[1:]))
            if not same:
                return False, "speed: dropout masks from the 16-bit generator (the compiled hash kernel disagreed with its reference)"
    except Exception as exc:  # noqa: BLE001 - inductor raises many kinds (no compiler, headers, ...); all mean "not here"
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return False, f"speed: dropout masks from the 16-bit generator (torch.compile unavailable: {reason})"
    _kernel = kernel
    return True, (f"speed: dropout masks hashed from a seed in one compiled kernel (train.dropout; "
                  f"compiled in {time.perf_counter() - started:.1f}s)")


def _kernel_args(p: float, seed: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """seed, threshold and scale as the kernel takes them. Signed 32-bit hashes below the threshold
    are dropped: the rate is drop_rate(p), as with the generator."""
    threshold = -(2**31) + round(p * _MASK_LEVELS) * (2**32 // _MASK_LEVELS)
    return (torch.tensor(seed & 0x7FFFFFFF, dtype=torch.int32), torch.tensor(threshold, dtype=torch.int32),
            torch.tensor(scale, dtype=torch.float32))


def kernel_ready(device: torch.device | str = "cpu") -> bool:
    """Whether masks on `device` come from the compiled kernel (CPU only; CUDA keeps the generator)."""
    return _kernel is not None and torch.device(device).type == "cpu"


class SeededMask:
    """One dropout mask, determined by (p, seed): apply it to x, to its gradient, to anything of x's shape.

    With the kernel, each apply hashes the indices again (nothing kept); with the generator, the
    bool mask is drawn on the first apply and kept by this object for the next ones. No autograd:
    it is for the forward and backward of autograd Functions (`dropout` below is the differentiable op).
    """

    def __init__(self, p: float, seed: int):
        self.p, self.seed = p, seed
        self._keep: torch.Tensor | None = None

    def apply(self, t: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """t with the dropped elements zeroed and the kept ones times `scale` (default keep_scale(p))."""
        scale = keep_scale(self.p) if scale is None else scale
        if kernel_ready(t.device) and t.numel() < 2**31:  # int32 indices
            with torch.no_grad(), torch.autocast(t.device.type, enabled=False):
                return _kernel(t.detach(), *_kernel_args(self.p, self.seed, scale))
        if self._keep is None:
            self._keep = keep_mask(t, self.p, self.seed)
        out = t * self._keep
        return out * scale if scale != 1.0 else out

    def keep(self, like: torch.Tensor) -> torch.Tensor:
        """The bool keep mask for tensors of `like`'s shape (for tests and inspection)."""
        return self.apply(torch.ones_like(like), 1.0) != 0


class _MaskDropoutFn(torch.autograd.Function):
    """dropout(x) with the generator mask; saves the bool mask (1 byte an element, as PyTorch's dropout does)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x, p, draw_seed())
        ctx.save_for_backward(keep)
        ctx.scale = keep_scale(p)
        return x * keep * ctx.scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None


class _HashedDropoutFn(torch.autograd.Function):
    """dropout(x) with the compiled kernel's mask; saves only the seed (backward hashes again)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        ctx.mask = SeededMask(p, draw_seed())
        return ctx.mask.apply(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.mask.apply(grad), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout with this module's masks: the compiled kernel's where it is ready, else the generator's."""
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0.0
    return (_HashedDropoutFn if kernel_ready(x.device) else _MaskDropoutFn).apply(x, p)


class MaskDropout(nn.Dropout):
    """nn.Dropout drawing its mask with `keep_mask`; the same `p` attribute (attention code reads it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def fast_dropout_in_place(model: nn.Module) -> int:
    """Replace every plain nn.Dropout of `model` (p > 0) by a MaskDropout of the same p; returns how many.

    Only the mask generator changes. Dropout inside attention kernels (SDPA's dropout_p) is not a
    module: `train.attention` draws it with these masks instead; LoRA's own dropout is then fused
    into lora_A (train.adapter_memory), which accepts a MaskDropout like an nn.Dropout.
    """
    targets = [(name, module) for name, module in model.named_modules() if type(module) is nn.Dropout and module.p > 0]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, MaskDropout(module.p, module.inplace))  # nn.ModuleDict entries too
    return len(targets)
