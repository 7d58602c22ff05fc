"""The run directory: the only hand-off between stages.

    runs/<run-id>/
      recipe.yaml      the resolved recipe
      data/            train/val/test JSONL + manifest.json
      adapter/         PEFT-format adapter (adapter_config.json + adapter_model.safetensors)
      model/           full fine-tuning instead of adapter/: the whole model (safetensors + tokenizer)
      merged/          merged model (safetensors), after `peftkit merge`
      metrics.json     {"train": …, "base": …, "tuned": …, "merge": …}
      train.log        one line per logged training step
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from peftkit.errors import RunDirError
from peftkit.recipe import Recipe, dump_recipe, load_recipe


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
