"""Training on several processes of one machine: torchrun starts them, the Trainer runs DDP over them.

    peftkit train RECIPE --processes 2      # relaunches itself under torchrun, 2 workers

    split = split_batch(batch_size=8, grad_accum=1, processes=2)   # 4 per process x 1 accumulation x 2
    launch_workers(["train", "recipe.yaml", "--processes", "2"], 2, run_dir, threads=1)   # the launcher's side
    world = join_process_group()             # a worker's side, before the Trainer exists

The `peftkit train` process the user started is the launcher: it picks the run directory and runs
`python -m torch.distributed.run --standalone --nproc_per_node N -m peftkit.cli train <same arguments>`
with PEFTKIT_RUN_DIR set, so every worker agrees on the directory; rank 0 alone writes it (data,
train.log, adapter, metrics, MLflow), the others only read what rank 0 wrote (`main_process_first`).
Each worker joins the process group before building the Trainer: gloo on CPU, NCCL on CUDA (one
GPU per process); transformers' Trainer (through accelerate) finds the group initialised and wraps
the model in DistributedDataParallel, which averages gradients over the processes.

The recipe's global batch is kept: train.batch_size x train.grad_accum examples per optimizer step
become micro-batch x accumulation x processes (`split_batch`); train.log says how it was split.
The cores (train.threads, default every core this process may run on) are split between the
processes: torchrun would otherwise give each one thread (OMP_NUM_THREADS=1).

(`accelerate launch --cpu --num_processes 2` starts only one process, hence torchrun.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from peftkit.errors import RecipeError

RUN_DIR_ENV = "PEFTKIT_RUN_DIR"  # the run directory every worker uses, set by the launcher


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory, reports and MLflow."""
        return self.rank == 0


def world() -> World:
    """The rank, world size and local rank torchrun set in the environment."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


@dataclass(frozen=True)
class BatchSplit:
    """How one optimizer step's examples are spread: micro_batch x grad_accum on each of `processes`."""

    micro_batch: int
    grad_accum: int
    processes: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.processes

    def describe(self) -> str:
        return (f"batch: {self.global_batch} examples per optimizer step = {self.micro_batch} per process x "
                f"{self.grad_accum} accumulation x {self.processes} processes (train.batch_size x train.grad_accum)")


def split_batch(batch_size: int, grad_accum: int, processes: int) -> BatchSplit:
    """Split the recipe's global batch (batch_size x grad_accum) over `processes`, the micro-batch as large as
    it can be without exceeding batch_size (fewest accumulation steps).

    Raises:
        RecipeError: the global batch does not divide by the number of processes.
    """
    total = batch_size * grad_accum
    if processes < 1:
        raise RecipeError(f"--processes: must be at least 1, got {processes}")
    if total % processes:
        raise RecipeError(
            f"train.batch_size x train.grad_accum = {batch_size} x {grad_accum} = {total} examples per step do not "
            f"divide among {processes} processes; make the product a multiple of {processes} "
            f"(e.g. train.batch_size={-(-batch_size // processes) * processes})")
    per_process = total // processes
    micro = max(m for m in range(1, min(batch_size, per_process) + 1) if per_process % m == 0)
    return BatchSplit(micro, per_process // micro, processes)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_process(threads: int | None, processes: int) -> int:
    """torch threads for each of `processes`: train.threads (default: every usable core) split evenly, at least 1."""
    return max(1, (threads or usable_cores()) // processes)


def planned_run_dir(runs_dir: str, run_id: str | None, name: str) -> Path:
    """The directory a new run will have: runs_dir/run_id, by default <name>-<UTC timestamp> as
    peftkit.rundir.new_run_dir names it, fixed once by the launcher so that every worker uses the same."""
    from datetime import datetime, timezone

    return Path(runs_dir) / (run_id or f"{name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")


def torchrun_command(cli_args: list[str], processes: int) -> list[str]:
    """The command that runs `peftkit <cli_args>` in `processes` workers on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "peftkit.cli", *cli_args]


def launch_workers(cli_args: list[str], processes: int, run_dir: Path, threads: int) -> int:
    """Run `peftkit <cli_args>` in `processes` torchrun workers that share `run_dir`; returns torchrun's exit status.

    SIGTERM sent to this launcher goes on to torchrun, which passes it to every worker (each saves a
    checkpoint and stops); the launcher then waits for them.
    """
    env = {**os.environ, RUN_DIR_ENV: str(Path(run_dir).resolve()), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(torchrun_command(cli_args, processes), env=env)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the workers too (same process group): wait for them
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


def launch_training(recipe: str | None, overrides: list[str], processes: int, force: bool = False,
                    resume: Path | None = None) -> tuple[int, Path]:
    """`peftkit train` on `processes` workers: (torchrun's exit status, the run directory they trained in).

    The recipe is read here only to name the run directory, check that the batch splits, and count
    threads; the workers read and check it again.
    """
    from peftkit.recipe import load_recipe

    if resume is not None:
        run_dir = Path(resume)
        saved = run_dir / "recipe.yaml"
        spec = load_recipe(saved) if saved.is_file() else None  # a missing one: the workers say so
        threads = threads_per_process(spec.train.threads if spec else None, processes)
    else:
        spec = load_recipe(recipe, overrides)
        split_batch(spec.train.batch_size, spec.train.grad_accum, processes)  # fails here, before any worker starts
        run_dir = planned_run_dir(spec.output.runs_dir, spec.output.run_id, spec.name)
        threads = threads_per_process(spec.train.threads, processes)
    args = ["train", *([recipe] if recipe is not None else []), *(a for o in overrides for a in ("--set", o)),
            "--processes", str(processes), *(["--force"] if force else []),
            *(["--resume", str(resume)] if resume is not None else [])]
    return launch_workers(args, processes, run_dir, threads), run_dir


# ------------------------------------------------------------------------------------------- worker side


def join_process_group() -> World:
    """Join the workers' process group (gloo on CPU, NCCL on CUDA with one GPU per process); a single
    process does nothing. Called before the Trainer, which then uses the group as it is."""
    import torch
    import torch.distributed as dist

    here = world()
    if here.size == 1 or dist.is_initialized():
        return here
    if torch.cuda.is_available():
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", here.size))
        if torch.cuda.device_count() < local_size:
            raise RecipeError(f"--processes {local_size}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                              "NCCL needs one GPU per process")
        torch.cuda.set_device(here.local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", here.local_rank))
    else:
        dist.init_process_group("gloo")
    return here


def barrier() -> None:
    """Wait until every worker gets here (nothing to wait for in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def main_process_first():
    """Rank 0 runs the block first (it writes: data, token caches), the other ranks then run it and read."""
    here = world()
    if here.size > 1 and not here.main:
        barrier()
    yield  # an error on rank 0 skips its barrier: torchrun then stops the waiting ranks
    if here.size > 1 and here.main:
        barrier()


def any_process(flag: bool) -> bool:
    """True on every worker when `flag` is true on any of them (a single process: the flag itself)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def average_gradients(parameters) -> None:
    """Average the gradients of `parameters` over every process, in place, as one flat all-reduce.

    For training steps whose forward pass does not go through DistributedDataParallel's forward (which
    is what arms its gradient hooks): there DDP leaves each process with its own gradients.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.requires_grad and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])  # fp32: the sum of bf16 gradients loses bits
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
