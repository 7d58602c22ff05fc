"""The run directory: the only hand-off between stages.

    runs/<run-id>/
      recipe.yaml      the resolved recipe
      data/            train/val/test JSONL + manifest.json
      adapter/         PEFT-format adapter (adapter_config.json + adapter_model.safetensors)
      model/           full fine-tuning instead of adapter/: the whole model (safetensors + tokenizer)
      merged/          merged model (safetensors), after `peftkit merge`
      metrics.json     {"train": …, "base": …, "tuned": …, "merge": …}
      lineage.json     sha256 of base weights, data, recipe, adapter; library versions; seed (after training)
      train.log        one line per logged training step
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from peftkit.errors import RunDirError
from peftkit.recipe import Recipe, dump_recipe, load_recipe
from peftkit.registry.lineage import build_lineage, portable_base_name


def new_run_dir(recipe: Recipe) -> Path:
    """Create `runs_dir/<run_id>` (default id: <name>-<UTC timestamp>) and write the resolved recipe."""
    run_id = recipe.output.run_id or f"{recipe.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    run_dir = Path(recipe.output.runs_dir) / run_id
    if (run_dir / "adapter").exists() or (run_dir / "model").exists():
        raise RunDirError(f"{run_dir}: already holds a trained adapter or model; choose another output.run_id")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    return run_dir


def open_run(run_dir: str | Path) -> tuple[Path, Recipe]:
    """An existing run directory and its resolved recipe."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no recipe.yaml); `peftkit runs` lists runs")
    return run_dir, load_recipe(run_dir / "recipe.yaml")


def require(run_dir: Path, name: str, stage: str) -> Path:
    path = run_dir / name
    if not path.exists():
        raise RunDirError(f"{run_dir}: no {name} yet; run `peftkit {stage}` first")
    return path


def read_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def update_metrics(run_dir: Path, **sections: dict) -> dict:
    """Replace the given top-level sections of metrics.json, keeping the others; atomic write."""
    metrics = read_metrics(run_dir)
    metrics.update(sections)
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, default=float), encoding="utf-8")
    os.replace(tmp, run_dir / "metrics.json")
    return metrics


def write_lineage(run_dir: Path, recipe: Recipe) -> Path:
    """After training: name the base portably in adapter_config.json, then write lineage.json (see
    peftkit.registry.lineage), so the adapter's sha256 there is that of the file as it stays."""
    config_path = run_dir / "adapter" / "adapter_config.json"
    portable = portable_base_name(recipe.model.name)
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if portable is not None:
            config["base_model_name_or_path"] = portable  # peft wrote this machine's folder of the base
        for key, value in config.items():
            # peft keeps target_modules (and similar) as sets: written in the process's string-hash order,
            # so the same training gave a different adapter_config.json sha256 in another process
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                config[key] = sorted(value)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp = run_dir / "lineage.json.tmp"
    tmp.write_text(json.dumps(build_lineage(run_dir, recipe), indent=2), encoding="utf-8")
    os.replace(tmp, run_dir / "lineage.json")
    return run_dir / "lineage.json"


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_runs(runs_dir: str | Path = "runs") -> list[dict]:
    """One summary row per run directory under `runs_dir`, newest first."""
    rows = []
    for recipe_file in Path(runs_dir).glob("*/recipe.yaml"):
        run_dir = recipe_file.parent
        metrics = read_metrics(run_dir)
        rows.append(
            {
                "run": run_dir.name,
                "path": str(run_dir),
                "modified": recipe_file.stat().st_mtime,
                "adapter": (run_dir / "adapter").is_dir(),
                "model": (run_dir / "model").is_dir(),
                "merged": (run_dir / "merged").is_dir(),
                "train": metrics.get("train", {}),
                "base": metrics.get("base", {}),
                "tuned": metrics.get("tuned", {}),
            }
        )
    return sorted(rows, key=lambda r: r["modified"], reverse=True)
