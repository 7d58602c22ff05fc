"""Which precision the hardware does fast, detected at run time, never assumed.

    choice = resolve_precision("auto")        # PrecisionChoice(name="bf16", device="cpu", reason="CPU has amx_bf16, avx512_bf16")
    choice = resolve_precision("fp32")        # the recipe forces a path

bf16 is fast on CUDA GPUs that support it (Ampere and later) and on CPUs with the AVX-512 bf16 or
AMX instructions (`avx512_bf16`, `amx_bf16` in /proc/cpuinfo). Anywhere else bf16 matrix products
are emulated: on an AVX2-only CPU one bf16 training step of SmolLM2 took 337 s against 12 s in
fp32 (issue 2's closing note), so `auto` falls back to fp32 there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

# CPU flags (as Linux names them in /proc/cpuinfo) that make bf16 matrix products native.
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    name: str  # "bf16" or "fp32"
    device: str  # "cuda" or "cpu"
    reason: str  # one line for the run log

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / arm64
            return set(value.split())
    return set()


def detect_precision(device: str | None = None, flags: set[str] | None = None) -> PrecisionChoice:
    """The fastest safe training precision on `device` (default: CUDA when available, else CPU)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "cuda", f"CUDA {torch.cuda.get_device_name()} supports bf16")
        return PrecisionChoice("fp32", "cuda", f"CUDA {torch.cuda.get_device_name()} has no native bf16")
    flags = cpu_flags() if flags is None else flags
    fast = sorted(f for f in FAST_BF16_CPU_FLAGS if f in flags)
    if fast:
        return PrecisionChoice("bf16", "cpu", f"CPU has {', '.join(fast)}")
    return PrecisionChoice("fp32", "cpu", "CPU lacks avx512_bf16/amx_bf16: bf16 would be emulated and slower than fp32")


def resolve_precision(requested: str, device: str | None = None, flags: set[str] | None = None) -> PrecisionChoice:
    """The recipe's `train.precision` (auto | bf16 | fp32) turned into a concrete choice with its reason."""
    detected = detect_precision(device, flags)
    if requested == "auto":
        return PrecisionChoice(detected.name, detected.device, f"auto: {detected.reason}")
    if requested == detected.name:
        return PrecisionChoice(requested, detected.device, f"recipe asks for {requested}; {detected.reason}")
    warning = " (WARNING: slower than fp32 here)" if requested == "bf16" else ""
    return PrecisionChoice(requested, detected.device, f"recipe forces {requested}{warning}; {detected.reason}")
