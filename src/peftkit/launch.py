"""Start peftkit's commands on jemalloc when the machine has it: freed tensor memory goes back to the OS.

    main()                               # the `peftkit` console script: relaunch first, then import the CLI
    relaunch_with_preferred_allocator()   # re-exec this process with jemalloc preloaded (also in cli.main)
    active_allocator()                   # the malloc this process runs on: "jemalloc", "glibc", ...

On CPU, PyTorch makes every tensor with the C library's malloc, and a training step frees and makes
activation-sized tensors of ever-changing sizes (each batch has its own length). glibc's malloc keeps
freed heap blocks resident and fragments (peftkit.train.allocator tunes it as far as it goes);
jemalloc (size classes, freed pages given back to the OS after a time) holds less. A malloc can only
be swapped before the process starts, so `peftkit` re-executes itself once with the library in
LD_PRELOAD, as PyTorch's own CPU launcher does (`python -m torch.backends.xeon.run_cpu --enable-jemalloc`,
which looks only for an unversioned libjemalloc.so and so misses Debian's runtime package).

`PEFTKIT_ALLOCATOR` chooses: `auto` (default: jemalloc when the dynamic loader finds it; Debian/Ubuntu:
`apt-get install libjemalloc2`), `system` (no relaunch: the C library's malloc), or the path of a
malloc library to preload. The relaunched process puts LD_PRELOAD and MALLOC_CONF back as the user had
them, so the programs it starts (Chromium for reports, say) run in the user's own environment.
Everything here is standard library: it runs before torch is imported.

Peak resident memory, `benchmarks/train_bench.py --suite qlora --configs peftkit_qlora --steps 8
--eval-examples 40` (smollm2-135m nf4, LoRA r=16 all-linear, batch 8, 2 threads, AVX2 CPU, fp32 compute;
one run each, stop 17): glibc tuned by peftkit.train.allocator 1.98 and 2.11 GiB;
jemalloc with its defaults 1.75 and 1.76 GiB; with the MALLOC_CONF below 1.75 GiB. Speed moved with the
shared cores (53-90 tokens/s), not with the allocator. The eval loss was the same to four decimals.
Classification batches are all one size: there jemalloc's gradual return of freed pages only costs page
faults, and `peftkit train` turns that decay off (peftkit.train.allocator.keep_freed_memory_for_reuse).
"""

from __future__ import annotations

import ctypes.util
import functools
import json
import os
import sys
from pathlib import Path

from peftkit.errors import PeftkitError

ALLOCATOR_ENV = "PEFTKIT_ALLOCATOR"
RELAUNCHED_ENV = "_PEFTKIT_RELAUNCHED"  # set across the one re-exec: the user's own LD_PRELOAD / MALLOC_CONF
KNOWN = ("jemalloc", "tcmalloc", "mimalloc")
# MALLOC_CONF when the user set none: PyTorch's launcher's (run_cpu.py) - big blocks in their own arena,
# purged eagerly; a background thread decays the rest. Same peak as jemalloc's defaults here (above).
JEMALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto"


def preferred_allocator_library() -> str | None:
    """The malloc library to preload per PEFTKIT_ALLOCATOR, or None (keep the system's)."""
    choice = os.environ.get(ALLOCATOR_ENV, "auto").strip() or "auto"
    if choice == "system":
        return None
    if choice == "auto":
        return ctypes.util.find_library("jemalloc") if sys.platform.startswith("linux") else None
    if not Path(choice).is_file():
        raise PeftkitError(f"{ALLOCATOR_ENV}={choice}: no such file; use auto, system, or the path of a malloc library "
                           "(e.g. /usr/lib/x86_64-linux-gnu/libjemalloc.so.2)")
    return str(Path(choice).resolve())


@functools.cache
def active_allocator() -> str:
    """Which malloc this process runs on: a preloaded one found in its memory map, else the C library's."""
    if not sys.platform.startswith("linux"):
        return "system"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "glibc"
    return next((name for name in KNOWN if f"lib{name}" in maps), "glibc")


def relaunch_with_preferred_allocator(argv: list[str] | None = None) -> None:
    """Re-execute this Python process with the preferred malloc preloaded (Linux); return when nothing to do.

    Does nothing when the library is absent, PEFTKIT_ALLOCATOR=system, another malloc is already
    preloaded, or this is the relaunched process (which restores the user's LD_PRELOAD and MALLOC_CONF).
    """
    if RELAUNCHED_ENV in os.environ:
        for key, value in json.loads(os.environ.pop(RELAUNCHED_ENV)).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return
    library = preferred_allocator_library()
    if library is None or active_allocator() != "glibc":
        return
    env = dict(os.environ)
    env[RELAUNCHED_ENV] = json.dumps({key: os.environ.get(key) for key in ("LD_PRELOAD", "MALLOC_CONF")})
    env["LD_PRELOAD"] = ":".join(filter(None, [os.environ.get("LD_PRELOAD"), library]))
    if "jemalloc" in Path(library).name and "MALLOC_CONF" not in os.environ:
        env["MALLOC_CONF"] = JEMALLOC_CONF
    argv = argv if argv is not None else [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:  # cannot exec (seccomp, odd interpreter): carry on with the system's malloc
        return


def main() -> None:
    """The `peftkit` console script: relaunch on jemalloc before typer, rich and the CLI are imported."""
    try:
        relaunch_with_preferred_allocator()
    except PeftkitError as exc:  # a bad PEFTKIT_ALLOCATOR: one line, as the CLI prints user mistakes
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    from peftkit.cli import main as cli_main

    cli_main()
