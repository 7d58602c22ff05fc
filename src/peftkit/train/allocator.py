"""Give freed tensor memory back to the OS during CPU training (glibc's malloc keeps it otherwise).

    return_freed_memory_in_place()   # once, before training; True when it took effect

On CPU, PyTorch allocates tensors with the C library's malloc. glibc serves large blocks with mmap
(returned to the OS on free) only above a threshold that it raises each time such a block is freed,
up to 32 MiB; after the first backward pass most activation-sized tensors (a few MiB each) come from
the heap instead, where freed blocks stay resident and fragment. Peak resident memory then counts
activations of earlier steps that are no longer in use. A fixed threshold of 128 KiB (glibc's own
starting value) keeps every tensor of that size on mmap.

Measured once (an RSS timeline sampled every 50 ms around `peftkit.train` on benchmarks/train_bench.py's
(c) recipe: smollm2-135m, LoRA r=16 all-linear, batch 8, 2 steps): peak RSS 3.35 GiB with glibc's dynamic
threshold (`MALLOC_MMAP_THRESHOLD_` unset), 2.61 GiB with it fixed, RSS after training 3.13 vs 1.05 GiB.
`train_bench.py --configs c_peftkit,e_peftkit_glibc_default` measures the same over 40 steps, with the
speed cost (fresh pages for each large tensor); not run yet on a quiet machine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024


def return_freed_memory_in_place(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process (Linux with glibc only); returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
