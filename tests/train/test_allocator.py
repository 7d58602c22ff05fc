"""Freed tensor memory goes back to the OS once the mmap threshold is fixed."""

from __future__ import annotations

import sys

import pytest
import torch

from peftkit.train.allocator import return_freed_memory_in_place


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_freed_activation_sized_tensors_leave_resident_memory():
    assert return_freed_memory_in_place() is True
    tensor = torch.ones(1024, 1024)
    del tensor  # a freed 4 MiB block: glibc's own rule would now raise its threshold past 4 MiB
    tensors = [torch.ones(1024, 1024) for _ in range(64)]  # 64 tensors of 4 MiB, written (resident)
    peak = _rss_mib()
    del tensors[::2]  # free every other one: holes between live blocks, as activations leave in backward
    after = _rss_mib()
    assert peak - after > 100, (peak, after)  # the 128 MiB freed left resident memory
