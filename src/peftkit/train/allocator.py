"""Give freed tensor memory back to the OS during CPU training (glibc's malloc keeps it otherwise).

    return_freed_memory_in_place()   # once, before training; True when it took effect (glibc only)
    trim_heap()                      # free pages back to the OS now (glibc malloc_trim, jemalloc purge)
    keep_freed_memory_for_reuse()    # jemalloc: never decay freed pages (one-size batches reuse them)

`peftkit` starts its commands on jemalloc when the machine has it (peftkit.launch), which needs only
keep_freed_memory_for_reuse (and trim_heap's purge); the rest is for the C library's malloc.

On CPU, PyTorch allocates tensors with the C library's malloc. glibc serves large blocks with mmap
(returned to the OS on free) only above a threshold that it raises each time such a block is freed,
up to 32 MiB; after the first backward pass most activation-sized tensors (a few MiB each) come from
the heap instead, where freed blocks stay resident and fragment. Peak resident memory then counts
activations of earlier steps that are no longer in use. A fixed threshold keeps every tensor above
it on mmap; but each such tensor then costs fresh zeroed pages (page faults) every time it is made,
so a threshold too low costs speed. 2 MiB keeps most of the memory saving at a small speed cost.

Measured with benchmarks/train_bench.py's (c) recipe (smollm2-135m, LoRA r=16 all-linear, batch 8,
chatterbot, 12 steps, 2 threads; each run alone, `peftkit.train` with the threshold patched;
stop 11):

| mmap threshold | s/step | peak RSS |
|---|---|---|
| glibc's dynamic one (unset) | 2.14 | 3.31 GiB |
| 32 MiB fixed | 2.17 | 3.29 GiB |
| 4 MiB | 2.11 | 3.31 GiB |
| **2 MiB** (this module) | 2.37 | 2.70 GiB |
| 1 MiB | 2.34 | 2.72 GiB |
| 128 KiB (glibc's starting value) | 3.05 | 2.61 GiB |

Over 40 steps 2 MiB alone crept to 2.85 GiB (2.05 s/step); with the heap trimmed after every step
(TrimHeapCallback) 2.62 GiB at 2.11 s/step (loss chunks of 256 in both runs).

`peftkit train` applies it to causal-LM runs only. Classification batches (bbc-news on minilm-l6, every
article cut at 128 tokens) are all one size and reuse the heap as it is: there the fixed threshold
and the trim cost speed for little memory (`train_bench.py --suite classify`'s peftkit run, AVX2 CPU,
fp32, stop 13: 1,203 tok/s / 1.65 GiB with them, 1,507 tok/s / 1.81 GiB without; one run each).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

from transformers import TrainerCallback

from peftkit.launch import active_allocator

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
MALLCTL_ARENAS_ALL = 4096  # jemalloc's "every arena" index in mallctl names
MMAP_THRESHOLD_BYTES = 2 * 1024 * 1024  # bf16 training; fp32 tensors are twice the size: 4 MiB there


def mmap_threshold_for(precision: str) -> int:
    """The threshold for a run training in `precision` ("bf16" or "fp32"): the same tensors, in bytes.

    fp32 on an AVX2 CPU (stop 12, smollm2-135m, LoRA r=16, long batches checkpointed, torch.profiler probe,
    3 steps after the 8 x 256 one): glibc's dynamic threshold 3.48 s/step, peak 5.08 GiB; 2 MiB fixed
    4.66 / 2.03; 4 MiB 4.36 / 2.16; 8 MiB 4.61 / 2.95; 512 KiB 6.16 / 1.80 (one run each, noisy).
    """
    return MMAP_THRESHOLD_BYTES * (2 if precision == "fp32" else 1)


@functools.cache
def _libc():
    """glibc through ctypes, or None (not Linux, or a C library without mallopt/malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # musl and others have no mallopt
        return None
    return libc


@functools.cache
def _jemalloc_mallctl():
    """jemalloc's mallctl when this process runs on jemalloc (preloaded, peftkit.launch), else None."""
    if active_allocator() != "jemalloc":
        return None
    try:
        mallctl = ctypes.CDLL(None).mallctl
    except AttributeError:  # a jemalloc built with a symbol prefix
        return None
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    mallctl.restype = ctypes.c_int
    return mallctl


def trim_heap() -> bool:
    """Return free heap pages to the OS now: jemalloc's purge of every arena, else glibc's malloc_trim.
    True when it ran (jemalloc) or released any (glibc)."""
    mallctl = _jemalloc_mallctl()
    if mallctl is not None:
        return mallctl(f"arena.{MALLCTL_ARENAS_ALL}.purge".encode(), None, None, None, 0) == 0
    libc = _libc()
    return bool(libc is not None and active_allocator() == "glibc" and libc.malloc_trim(0))


def keep_freed_memory_for_reuse() -> bool:
    """On jemalloc, stop giving freed pages back to the OS for the rest of the process; True when it applied.

    jemalloc returns freed pages gradually (its dirty/muzzy decay, 10 s by default), and the next step
    faults them in again, zeroed. Where every batch has the same size, the next step reuses exactly
    what this one freed, so returning it is pure cost: 12 classification steps (bbc-news on minilm-l6,
    batch 16 x 128 tokens, bf16, 2 threads, stop 18, one run each, same process setup) took 12.6 s,
    4.28 M minor page faults and 8.8 s of system time on jemalloc's decay, 10.2 s, 0.31 M and 1.8 s
    with it off; the peak was 1.13 GiB both ways. Sets the decay of every arena that exists (the
    oversize one included) and the default for arenas made later, after purging every arena: what
    loading and tokenising freed goes back to the OS first (called just before the first step, so
    that only the training steps' own memory is kept; stop 19: tokenising bbc-news left 89 MB freed
    but resident when the decay was turned off before it).
    """
    mallctl = _jemalloc_mallctl()
    if mallctl is None:
        return False
    trim_heap()
    never = ctypes.c_ssize_t(-1)
    narenas, size = ctypes.c_uint(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_uint))
    if mallctl(b"arenas.narenas", ctypes.byref(narenas), ctypes.byref(size), None, 0) != 0:
        return False

    def never_decay(name: str) -> bool:
        return mallctl(name.encode(), None, None, ctypes.byref(never), ctypes.sizeof(never)) == 0

    kinds = ("dirty", "muzzy")
    for index in range(narenas.value + 1):  # + the oversize arena; arenas not made yet answer EFAULT
        for kind in kinds:
            never_decay(f"arena.{index}.{kind}_decay_ms")
    return all([never_decay(f"arenas.{kind}_decay_ms") for kind in kinds])


class TrimHeapCallback(TrainerCallback):
    """Trim the heap after every optimizer step (CPU): blocks that one step's activations freed below the
    mmap threshold go back to the OS instead of staying resident and fragmenting into the next step."""

    def on_step_end(self, args, state, control, **kwargs):
        trim_heap()


def return_freed_memory_in_place(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process (Linux on glibc's malloc only); returns whether it applied."""
    libc = _libc()
    return libc is not None and active_allocator() == "glibc" and libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1
