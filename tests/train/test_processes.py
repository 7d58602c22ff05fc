"""Training on several processes (peftkit.train.processes): the batch split, and 2 CPU processes under torchrun
training the same adapter as one process with the same global batch."""

import subprocess
import sys

import pytest
import torch

from peftkit.errors import RecipeError
from peftkit.train.processes import split_batch, threads_per_process, torchrun_command

# Max |difference| of any adapter weight, 2 gloo processes against 1, 8 steps: the two sum the same
# per-token losses in another order (two halves, then an all-reduce), ~1e-7 relative per step. Measured: see
# the test's assertion message.
TOLERANCE = 1e-5


def test_split_keeps_the_global_batch_with_the_largest_micro_batch():
    assert split_batch(8, 1, 2) == split_batch(8, 1, 2)
    s = split_batch(8, 1, 2)
    assert (s.micro_batch, s.grad_accum, s.global_batch) == (4, 1, 8)
    s = split_batch(4, 4, 2)  # 8 per process: 4 x 2 (not 8 x 1: no micro-batch above the recipe's)
    assert (s.micro_batch, s.grad_accum, s.global_batch) == (4, 2, 16)
    s = split_batch(3, 2, 2)
    assert (s.micro_batch, s.grad_accum) == (3, 1)
    s = split_batch(6, 1, 1)
    assert (s.micro_batch, s.grad_accum, s.processes) == (6, 1, 1)
    assert "8 examples per optimizer step = 4 per process x 1 accumulation x 2 processes" in split_batch(8, 1, 2).describe()


def test_a_global_batch_that_does_not_divide_is_an_error_naming_both_numbers():
    with pytest.raises(RecipeError, match=r"3 x 2 = 6 examples per step do not divide among 4 processes"):
        split_batch(3, 2, 4)


def test_threads_are_split_between_processes():
    assert threads_per_process(8, 2) == 4
    assert threads_per_process(3, 2) == 1
    assert threads_per_process(1, 4) == 1  # never 0
    cmd = torchrun_command(["train", "r.yaml"], 2)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] and cmd[-2:] == ["train", "r.yaml"]


def test_two_cpu_processes_train_the_adapter_one_process_trains(tiny_llama_dir, runs_dir):
    from safetensors.torch import load_file

    from peftkit.train import train

    common = [f"model.name={tiny_llama_dir}", "data.size=80", "train.max_steps=8", "train.batch_size=4",
              "method.dropout=0", "train.checkpoint_every=0", "train.log_every=4", f"output.runs_dir={runs_dir}",
              "output.mlflow=false"]  # 8 steps x 4 < the 38 training rows: one epoch, every batch full
    threads = torch.get_num_threads()
    try:
        one = train("chatterbot-sft", overrides=[*common, "output.run_id=one", "train.threads=1"])
    finally:
        torch.set_num_threads(threads)
    cli = [sys.executable, "-m", "peftkit.cli", "train", "chatterbot-sft", "--processes", "2",
           *(a for o in [*common, "output.run_id=two", "train.threads=2"] for a in ("--set", o))]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    two_dir = runs_dir / "two"
    assert f"adapter: {two_dir / 'adapter'}" in done.stdout.replace("\n", "")  # rich wraps long lines

    log = (two_dir / "train.log").read_text()
    assert "4 examples per optimizer step = 2 per process x 1 accumulation x 2 processes" in log
    assert "processes: 2 (gloo, 1 threads each)" in log
    assert log.count("step 4/8  loss=") == 1  # one writer: rank 0
    import json

    metrics = json.loads((two_dir / "metrics.json").read_text())["train"]
    assert (metrics["processes"], metrics["micro_batch"], metrics["steps"]) == (2, 2, 8)
    assert metrics["loss_history"][0]["loss"] == pytest.approx(one.metrics["loss_history"][0]["loss"], rel=1e-5)

    a = load_file(one.run_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(two_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max(a[k].abs().max().item() for k in a if "lora_B" in k)  # B starts at 0: how far training moved it
    assert moved > 1e-3  # the comparison is between trained adapters
    assert diff < TOLERANCE, f"max |adapter difference| 2 vs 1 process: {diff:.3g} (largest lora_B weight {moved:.3g})"
    print(f"\nmax |adapter difference| 2 vs 1 process: {diff:.3g} (largest lora_B weight {moved:.3g})")
