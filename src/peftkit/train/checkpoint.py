"""Resumable checkpoints: safetensors and JSON only, committed by a manifest written last, resumed by the Trainer.

    class MyTrainer(SafetensorsCheckpoints, Trainer): ...       # checkpoints in this format
    checkpoint_args(recipe.train)                                # TrainingArguments: every train.checkpoint_every steps
    folder = latest_checkpoint(run_dir, processes=1)             # the newest complete, verified checkpoint, or None
    trainer.train(resume_from_checkpoint=str(folder))

A checkpoint is RUN/checkpoints/checkpoint-<step>/ with what transformers' Trainer needs to continue
exactly where it stopped:

    adapter_model.safetensors, adapter_config.json   the adapter (model.safetensors for method.kind full)
    optimizer.safetensors + optimizer.json           optimizer state tensors; param groups and scalars
    scheduler.json                                   learning-rate scheduler state
    rng-<rank>.safetensors + rng-<rank>.json         torch (CPU, CUDA), numpy and Python RNG of every process
    trainer_state.json                               step, epoch, log history: the data position (the Trainer
                                                     skips the batches already trained in the current epoch)
    checkpoint.json                                  written last, atomically: step, processes, sha256 of every file

transformers writes optimizer, scheduler and RNG states with torch.save (pickle) and reads them back
with torch.load(weights_only=True); it also pickles its TrainingArguments into training_args.bin.
Here the Trainer's save/load seams for those states (`_save_optimizer_and_scheduler`,
`_save_rng_state` and their `_load_*` counterparts) write and read safetensors and JSON instead,
and training_args.bin is deleted before the manifest is written (nothing reads it back). Resuming
reads a checkpoint only when every file is the one its manifest hashed, none is a link or a pickle,
and the folder lies inside the run directory: nothing is ever unpickled.

Without checkpoint.json a folder is incomplete (the process died while writing it): it is never
resumed from and is deleted. The newest `train.keep_checkpoints` complete ones are kept.

SIGTERM (a spot instance being reclaimed, `kill`, torchrun passing it on) finishes the optimizer step
in progress, saves a checkpoint and stops; `peftkit train` then exits with TrainingInterrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from peftkit.errors import ResumeError
from peftkit.recipe import Recipe, TrainSpec, load_recipe
from peftkit.train.processes import any_process, barrier

CHECKPOINTS = "checkpoints"  # RUN/checkpoints: also the Trainer's output_dir (train.common)
MANIFEST = "checkpoint.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_FOLDER = re.compile(r"checkpoint-(\d+)")
# Where a resumed run lives is RUN itself, whatever the recipe says; the rest of the recipe must not change.
LOCATION_FIELDS = ("output.runs_dir", "output.run_id")


def checkpoint_args(spec: TrainSpec) -> dict:
    """TrainingArguments for checkpoints every train.checkpoint_every steps (0: none but on SIGTERM).

    With early stopping on, its own checkpoints (one per validation round, the best kept) are the
    resumable ones (callbacks.early_stopping_args); this then adds nothing.
    """
    if isinstance(spec.early_stopping.patience, int) or not spec.checkpoint_every:
        return {}
    # save_total_limit stays unset: SafetensorsCheckpoints deletes old ones only after the new one is committed
    return {"save_strategy": "steps", "save_steps": spec.checkpoint_every}


class SafetensorsCheckpoints:
    """Trainer mixin: checkpoints of safetensors and JSON files, committed by a manifest written last.

    `keep_checkpoints` (set by peftkit.train.run): how many complete checkpoints to keep; None leaves the
    Trainer's own rotation (early stopping keeps the best one too).
    """

    keep_checkpoints: int | None = None

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        barrier()  # every process has written its RNG state
        if self.args.should_save:
            (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle of TrainingArguments; never read back
            commit_checkpoint(folder, self.state.global_step, self.args.world_size)
            if self.keep_checkpoints is not None:
                prune_checkpoints(folder.parent, self.keep_checkpoints)
        barrier()  # no process runs ahead of a checkpoint that is not committed yet

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.args.should_save:  # DDP: every process holds the same optimizer state
            return
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tensors, meta = optimizer_state_parts(self.optimizer.state_dict())
        _save_tensors(tensors, folder / "optimizer.safetensors")
        _write_json(folder / "optimizer.json", meta)
        _write_json(folder / "scheduler.json", self.lr_scheduler.state_dict())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        folder = Path(checkpoint)
        self.optimizer.load_state_dict(optimizer_state_from_parts(
            _load_tensors(folder / "optimizer.safetensors"), _read_json(folder / "optimizer.json")))
        self.lr_scheduler.load_state_dict(_read_json(folder / "scheduler.json"))

    def _save_rng_state(self, output_dir: str) -> None:
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tensors, meta = rng_state_parts()
        _save_tensors(tensors, folder / f"rng-{self.args.process_index}.safetensors")
        _write_json(folder / f"rng-{self.args.process_index}.json", meta)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        folder = Path(checkpoint)
        index = self.args.process_index
        restore_rng_state(_load_tensors(folder / f"rng-{index}.safetensors"), _read_json(folder / f"rng-{index}.json"))


# ------------------------------------------------------------------------------------------- state as files


def optimizer_state_parts(state_dict: dict) -> tuple[dict, dict]:
    """An optimizer state_dict as (tensors for safetensors, the rest for JSON)."""
    tensors, scalars = {}, {}
    for param_id, entries in state_dict["state"].items():
        for key, value in entries.items():
            if hasattr(value, "detach"):
                tensors[f"state/{param_id}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    meta = {"param_groups": state_dict["param_groups"], "scalars": scalars,
            "tensors": {name: name.split("/")[1:] for name in tensors}}
    return tensors, meta


def optimizer_state_from_parts(tensors: dict, meta: dict) -> dict:
    """The optimizer state_dict optimizer_state_parts took apart (parameter ids back to ints)."""
    state: dict[int, dict] = {}
    for name, (param_id, key) in meta["tensors"].items():
        state.setdefault(int(param_id), {})[key] = tensors[name]
    for param_id, entries in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state_parts() -> tuple[dict, dict]:
    """This process's torch (CPU and every CUDA device), numpy and Python RNG states as (tensors, JSON)."""
    import numpy as np
    import torch

    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    meta = {"python": [version, list(words), gauss], "numpy": [kind, int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def restore_rng_state(tensors: dict, meta: dict) -> None:
    """Set every RNG back to what rng_state_parts recorded."""
    import numpy as np
    import torch

    version, words, gauss = meta["python"]
    random.setstate((version, tuple(words), gauss))
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[f"cuda/{i}"] for i in range(len(tensors)) if f"cuda/{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _save_tensors(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def _load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _write_json(path: Path, data) -> None:
    try:
        text = json.dumps(data)
    except TypeError as exc:
        raise ResumeError(f"{path}: the state is not plain data and cannot be checkpointed as JSON ({exc})") from None
    path.write_text(text, encoding="utf-8")


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------- commit, find, prune


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def commit_checkpoint(folder: Path, step: int, processes: int) -> None:
    """Write folder/checkpoint.json (step, processes, sha256 of every file) atomically: the folder is now complete."""
    files = {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"step": step, "processes": processes, "files": files}, indent=1), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)


def checkpoint_folders(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-<step> folder under root, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _FOLDER.fullmatch(p.name))]
    return sorted(found, reverse=True)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints under root; delete older and incomplete ones."""
    complete = 0
    for _, folder in checkpoint_folders(root):
        if (folder / MANIFEST).is_file() and complete < keep:
            complete += 1
        else:
            shutil.rmtree(folder, ignore_errors=True)


def discard_incomplete(run_dir: Path) -> list[str]:
    """Delete checkpoint folders without a manifest (a process died while writing them); returns their names."""
    gone = [f.name for _, f in checkpoint_folders(Path(run_dir) / CHECKPOINTS) if not (f / MANIFEST).is_file()]
    for name in gone:
        shutil.rmtree(Path(run_dir) / CHECKPOINTS / name, ignore_errors=True)
    return gone


def remove_checkpoints(run_dir: Path) -> None:
    """Delete RUN/checkpoints (once the run's adapter is saved, nothing resumes from them)."""
    shutil.rmtree(Path(run_dir) / CHECKPOINTS, ignore_errors=True)


def verify_checkpoint(folder: Path, run_dir: Path) -> dict:
    """The manifest of `folder` once every file checks out; ResumeError naming the file otherwise.

    Checked: the folder lies inside the run directory; no file is a link or a pickle; the files are
    exactly those the manifest lists, each with its recorded sha256.
    """
    root = Path(run_dir).resolve()
    if folder.is_symlink() or not folder.resolve().is_relative_to(root):
        raise ResumeError(f"{folder}: a checkpoint must be a folder inside {root}, not a link out of it")
    manifest = _read_json(folder / MANIFEST)
    present = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.name != MANIFEST}
    for name, path in sorted(present.items()):
        if path.is_symlink():
            raise ResumeError(f"{path}: a link inside a checkpoint; refusing to resume from {folder}")
        if path.is_file() and path.suffix in PICKLE_SUFFIXES:
            raise ResumeError(f"{path}: a pickle-format file ({path.suffix}); peftkit checkpoints hold safetensors and "
                              "JSON only and never unpickle")
    files = {n for n, p in present.items() if p.is_file()}
    listed = set(manifest["files"])
    if files != listed:
        raise ResumeError(f"{folder}: files differ from {MANIFEST}: extra {sorted(files - listed)}, "
                          f"missing {sorted(listed - files)}")
    for name, digest in manifest["files"].items():
        actual = _sha256(folder / name)
        if actual != digest:
            raise ResumeError(f"{folder / name}: sha256 {actual[:12]}… but {MANIFEST} recorded {digest[:12]}…; "
                              "the checkpoint changed after it was written")
    return manifest


def latest_checkpoint(run_dir: Path, processes: int) -> Path | None:
    """The newest complete checkpoint of the run, verified (verify_checkpoint), or None when there is none yet.

    Raises:
        ResumeError: it fails verification, or was written by another number of processes.
    """
    for step, folder in checkpoint_folders(Path(run_dir) / CHECKPOINTS):
        if not (folder / MANIFEST).is_file():
            continue
        manifest = verify_checkpoint(folder, run_dir)
        if manifest["processes"] != processes:
            raise ResumeError(f"{folder}: written by {manifest['processes']} training process(es); resume with "
                              f"--processes {manifest['processes']} (got {processes}): each process's RNG state and "
                              "data shard are part of the checkpoint")
        return folder
    return None


# ------------------------------------------------------------------------------------------- resume


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resumed_recipe(run_dir: Path, recipe: Recipe | str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """The recipe of the run in `run_dir`, checked against the one given to resume it (if any).

    Raises:
        ResumeError: a field other than the run's location differs; the message names each one with both values.
    """
    saved_path = Path(run_dir) / "recipe.yaml"
    if not saved_path.is_file():
        raise ResumeError(f"{run_dir}: not a run directory (no recipe.yaml); `peftkit runs` lists runs")
    saved = load_recipe(saved_path)
    if recipe is None and not overrides:
        return saved
    given = recipe if isinstance(recipe, Recipe) else load_recipe(recipe if recipe is not None else saved_path, overrides)
    old, new = _flat(saved.model_dump(mode="json")), _flat(given.model_dump(mode="json"))
    differ = [k for k in sorted(old.keys() | new.keys()) if k not in LOCATION_FIELDS and old.get(k) != new.get(k)]
    if differ:
        source = "the recipe given" if recipe is not None else "--set"
        raise ResumeError(f"{saved_path}: a resumed run must use the recipe it started with; "
                          + "; ".join(f"{k} is {old.get(k)!r} there, {new.get(k)!r} in {source}" for k in differ))
    return saved


# ------------------------------------------------------------------------------------------- SIGTERM


class SigtermCheckpoint(TrainerCallback):
    """On SIGTERM: finish the optimizer step in progress, save a checkpoint, stop training.

    Every process asks every other at each step end (one tiny all-reduce), so that all of them save
    and stop at the same step even when the signal reached them at different times.
    """

    def __init__(self):
        self.requested = False
        self.stopped_at: int | None = None

    def request(self, signum=None, frame=None) -> None:
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        if any_process(self.requested):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


@contextmanager
def checkpoint_on_sigterm(callback: SigtermCheckpoint):
    """While inside, SIGTERM asks `callback` to checkpoint and stop instead of killing the process (main thread only:
    signal handlers cannot be set elsewhere, and there the process keeps its default)."""
    if threading.current_thread() is not threading.main_thread():
        yield callback
        return
    previous = signal.signal(signal.SIGTERM, callback.request)
    try:
        yield callback
    finally:
        signal.signal(signal.SIGTERM, previous)
