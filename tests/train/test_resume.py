"""Checkpoints and resume (peftkit.train.checkpoint): state files round-trip, damaged or unsafe checkpoints are
refused, a changed recipe is named, and a training killed with SIGKILL resumes to the uninterrupted adapter."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from peftkit.errors import ResumeError
from peftkit.recipe import dump_recipe, load_recipe
from peftkit.train.checkpoint import (MANIFEST, commit_checkpoint, latest_checkpoint, optimizer_state_from_parts,
                                      optimizer_state_parts, restore_rng_state, resumed_recipe, rng_state_parts)


def test_optimizer_state_round_trips_through_safetensors_and_json():
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for _ in range(2):
        sum((p ** 2).sum() for p in params).backward()
        opt.step()
    tensors, meta = optimizer_state_parts(opt.state_dict())
    json.dumps(meta)  # plain data
    fresh = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=5.0)
    fresh.load_state_dict(optimizer_state_from_parts(tensors, json.loads(json.dumps(meta))))
    assert fresh.param_groups[0]["lr"] == 1e-3
    for i in range(2):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh.state[fresh.param_groups[0]["params"][i]][key], opt.state[params[i]][key])


def test_rng_state_round_trips():
    import random

    import numpy as np

    tensors, meta = rng_state_parts()
    first = (torch.rand(3), np.random.rand(2), random.random())
    restore_rng_state(tensors, json.loads(json.dumps(meta)))
    again = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(first[0], again[0]) and (first[1] == again[1]).all() and first[2] == again[2]


def _run_with_checkpoint(tmp_path, files: dict[str, bytes]):
    run = tmp_path / "run"
    folder = run / "checkpoints" / "checkpoint-3"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return run, folder


def test_only_a_committed_unchanged_checkpoint_of_safe_files_is_resumed(tmp_path):
    run, folder = _run_with_checkpoint(tmp_path, {"adapter_model.safetensors": b"w", "trainer_state.json": b"{}"})
    assert latest_checkpoint(run, 1) is None  # no manifest yet: incomplete
    commit_checkpoint(folder, 3, 1)
    assert latest_checkpoint(run, 1) == folder
    with pytest.raises(ResumeError, match="written by 1 training process"):
        latest_checkpoint(run, 2)

    (folder / "trainer_state.json").write_bytes(b'{"global_step": 99}')
    with pytest.raises(ResumeError, match=r"trainer_state.json: sha256 .* but checkpoint.json recorded"):
        latest_checkpoint(run, 1)

    run, folder = _run_with_checkpoint(tmp_path / "b", {"adapter_model.safetensors": b"w", "optimizer.pt": b"x"})
    commit_checkpoint(folder, 3, 1)
    with pytest.raises(ResumeError, match=r"optimizer.pt: a pickle-format file"):
        latest_checkpoint(run, 1)

    run, folder = _run_with_checkpoint(tmp_path / "c", {"adapter_model.safetensors": b"w"})
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    (folder / "trainer_state.json").symlink_to(outside)
    commit_checkpoint(folder, 3, 1)
    with pytest.raises(ResumeError, match="a link inside a checkpoint"):
        latest_checkpoint(run, 1)


def test_a_resumed_recipe_must_equal_the_runs_and_the_error_names_the_field(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recipe = load_recipe("chatterbot-sft", ["train.lr=1e-3", "output.run_id=run"])
    (run / "recipe.yaml").write_text(dump_recipe(recipe))
    assert resumed_recipe(run, None) == recipe
    # where the run lives is RUN itself: another runs_dir / run_id is not a difference
    assert resumed_recipe(run, load_recipe("chatterbot-sft", ["train.lr=1e-3", "output.runs_dir=x"])) == recipe
    with pytest.raises(ResumeError, match=r"train.lr is 0.001 there, 0.002 in the recipe given; train.seed is 42 there, 7"):
        resumed_recipe(run, load_recipe("chatterbot-sft", ["train.lr=2e-3", "train.seed=7"]))
    with pytest.raises(ResumeError, match=r"train.batch_size is 8 there, 2 in --set"):
        resumed_recipe(run, None, ["train.batch_size=2"])


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_training_killed_mid_epoch_resumes_to_the_uninterrupted_adapter(tiny_llama_dir, runs_dir):
    from peftkit.train import train

    # 10 steps x 2 examples of the 38 training rows: the kill lands mid-epoch. LoRA dropout is on (0.05),
    # so the adapter depends on the restored RNG as well as on the weights, optimizer and data position.
    common = [f"model.name={tiny_llama_dir}", "data.size=80", "train.max_steps=10", "train.batch_size=2",
              "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.threads=1", "train.log_every=2",
              f"output.runs_dir={runs_dir}", "output.mlflow=false"]
    killed = runs_dir / "killed"
    cli = [sys.executable, "-m", "peftkit.cli", "train", "chatterbot-sft",
           *(a for o in [*common, "output.run_id=killed"] for a in ("--set", o))]
    proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = killed / "checkpoints" / "checkpoint-2" / MANIFEST
    deadline = time.monotonic() + 180
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (killed / "adapter").exists()  # it died before the end
    resumed_from = latest_checkpoint(killed, 1)
    assert resumed_from is not None and int(resumed_from.name.split("-")[1]) < 10

    threads = torch.get_num_threads()
    try:
        resumed = train(None, resume=killed)
        whole = train("chatterbot-sft", overrides=[*common, "output.run_id=whole"])
    finally:
        torch.set_num_threads(threads)
    assert resumed.metrics["steps"] == 10 and resumed.metrics["resumed_from_step"] == int(resumed_from.name.split("-")[1])
    assert not (killed / "checkpoints").exists()  # the finished run's checkpoints are gone
    assert f"resume: from {resumed_from.name}" in (killed / "train.log").read_text()
    a, b = _sha256(killed / "adapter" / "adapter_model.safetensors"), _sha256(whole.run_dir / "adapter" / "adapter_model.safetensors")
    print(f"\nsha256 killed at step <= {resumed_from.name} + resumed: {a}\nsha256 uninterrupted:              {b}")
    assert a == b
