"""Devices a plan is judged against: a GPU catalog, `--gpu-memory 16GiB`, and the device this process has.

    gpus = select_gpus("rtx-4090,a100-80gb")      # or "all"
    Device.from_memory("16GiB"), current_device()

Memory is what `nvidia-smi` reports as total for each card (MiB), not the marketing GB. Peak dense
BF16 tensor throughput (TFLOP/s, no sparsity) and the on-demand price per GPU-hour are used by
peftkit.plan.cost; the prices are typical public cloud list prices and are only defaults: pass
`--prices FILE.yaml` (`{gpu-name: usd_per_hour}`) to use your own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from peftkit.errors import PeftkitError

MiB = 1024**2


class PlanError(PeftkitError):
    """A plan request that cannot be answered: unknown GPU, bad memory size, bad price table."""


@dataclass(frozen=True)
class Device:
    name: str
    memory_bytes: int
    kind: str = "cuda"  # "cuda" | "cpu"
    bf16_tflops: float | None = None
    usd_per_hour: float | None = None

    @classmethod
    def from_memory(cls, text: str, kind: str = "cuda") -> "Device":
        return cls(name=f"custom {text}", memory_bytes=parse_bytes(text), kind=kind)


GPUS: dict[str, Device] = {
    d.name: d
    for d in (
        Device("rtx-3060", 12288 * MiB, bf16_tflops=25.4, usd_per_hour=0.10),
        Device("rtx-3090", 24576 * MiB, bf16_tflops=71.0, usd_per_hour=0.22),
        Device("rtx-4090", 24564 * MiB, bf16_tflops=165.2, usd_per_hour=0.40),
        Device("a10", 23028 * MiB, bf16_tflops=125.0, usd_per_hour=0.75),
        Device("l4", 23034 * MiB, bf16_tflops=121.0, usd_per_hour=0.70),
        Device("a100-40gb", 40960 * MiB, bf16_tflops=312.0, usd_per_hour=1.30),
        Device("a100-80gb", 81920 * MiB, bf16_tflops=312.0, usd_per_hour=1.80),
        Device("h100-80gb", 81559 * MiB, bf16_tflops=989.0, usd_per_hour=2.50),
        Device("h200", 143771 * MiB, bf16_tflops=989.0, usd_per_hour=3.50),
    )
}
_GPU_ALIASES = {"3060": "rtx-3060", "3090": "rtx-3090", "4090": "rtx-4090", "a100": "a100-80gb", "a100-40": "a100-40gb",
                "a100-80": "a100-80gb", "h100": "h100-80gb", "h200-141gb": "h200"}
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_bytes(text: str) -> int:
    """'16GiB', '24 GB', '512MiB', '1.5e9' → bytes (GB = 10^9, GiB = 2^30)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise PlanError(f"--gpu-memory {text!r}: expected a size such as 16GiB, 24GB or 512MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def select_gpus(names: str | None, prices: Path | None = None) -> list[Device]:
    """GPUs from a comma-separated list of catalog names, or all of them for 'all' / None."""
    table = dict(GPUS)
    if prices is not None:
        table = _with_prices(table, prices)
    if not names or names.strip().lower() == "all":
        return list(table.values())
    out = []
    for raw in names.split(","):
        key = raw.strip().lower()
        key = _GPU_ALIASES.get(key, key)
        if key not in table:
            raise PlanError(f"--gpu {raw.strip()!r}: unknown GPU; known: {', '.join(table)} (or --gpu-memory 16GiB)")
        out.append(table[key])
    return out


def _with_prices(table: dict[str, Device], path: Path) -> dict[str, Device]:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PlanError(f"{path}: cannot read the price table ({exc})") from None
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: a price table maps GPU names to USD per hour, e.g. `rtx-4090: 0.45`")
    out = dict(table)
    for name, price in raw.items():
        key = _GPU_ALIASES.get(str(name).lower(), str(name).lower())
        if key not in out:
            raise PlanError(f"{path}: {name}: unknown GPU; known: {', '.join(table)}")
        if not isinstance(price, (int, float)) or price < 0:
            raise PlanError(f"{path}: {name}: expected a price in USD per hour, found {price!r}")
        d = out[key]
        out[key] = Device(d.name, d.memory_bytes, d.kind, d.bf16_tflops, float(price))
    return out


def current_device() -> Device:
    """The device a training run here would use: the first CUDA GPU's free memory, else available RAM."""
    import torch

    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(0)
        return Device(f"cuda:0 ({torch.cuda.get_device_name(0)}, free)", free, "cuda")
    import psutil

    return Device("cpu (available RAM)", psutil.virtual_memory().available, "cpu")
