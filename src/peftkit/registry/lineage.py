"""lineage.json of a run: what went into an adapter, by sha256, and what made it.

    lineage = build_lineage(run_dir, recipe)     # rundir.write_lineage writes it after training

    {"run": "quickstart-20261207-214624", "started": "…Z", "finished": "…Z",
     "base": {"name": "smollm2-135m", "identity": "catalog:smollm2-135m", "weights": {"model.safetensors": "…"}},
     "recipe_sha256": "…", "data": {"inputs": […], "splits": {"train": "…", …}},
     "adapter": {"adapter_model.safetensors": "…", …}, "seed": 42, "threads": 2, "device": "cpu",
     "libraries": {"torch": "…", …}, "code": {"peftkit": "0.1.0", "git_commit": "…"}}

The base is named portably (`base_identity`): a built-in by its catalog name, a hub id as given, a
local folder by the sha256 of its weights; never by this machine's path.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path

from peftkit.registry.digests import base_weight_digests, folder_digests, sha256_file, sha256_json

LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "safetensors", "tokenizers",
             "bitsandbytes", "mlflow", "model-signing")


def base_identity(model_name: str, weights: dict[str, str]) -> str:
    """A name for the base that means the same on any machine: catalog:NAME, hub:ORG/NAME, or sha256:DIGEST
    (over the folder's weight digests) for a local folder."""
    from peftkit.catalog.models import BUILTIN_MODELS

    if model_name in BUILTIN_MODELS:
        return f"catalog:{model_name}"
    if not Path(model_name).expanduser().exists() and model_name.count("/") == 1:
        return f"hub:{model_name}"
    return f"sha256:{sha256_json(weights)}"


def portable_base_name(model_name: str) -> str | None:
    """What adapter_config.json should call the base: a built-in's catalog name or a hub id; None for a
    local folder (its identity is the weights' sha256 in lineage.json; serve compares folders by path)."""
    identity = base_identity(model_name, {})
    return identity.split(":", 1)[1] if identity.startswith(("catalog:", "hub:")) else None


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def code_version() -> dict:
    """peftkit's version, and the git commit of its source when it runs from a checkout."""
    import peftkit

    out = {"peftkit": peftkit.__version__}
    source = Path(peftkit.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return out
    if commit.returncode == 0 and commit.stdout.strip():
        out["git_commit"] = commit.stdout.strip()
    return out


def build_lineage(run_dir: Path, recipe, finished: datetime | None = None) -> dict:
    """The lineage of a trained run (reads the manifest, metrics.json and the adapter or model folder)."""
    import torch

    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")) \
        if (run_dir / "metrics.json").is_file() else {}
    train = metrics.get("train", {})
    artifact = "model" if (run_dir / "model").is_dir() and not (run_dir / "adapter").is_dir() else "adapter"
    saved = [p for p in (run_dir / artifact).glob("*.safetensors")]
    # training ends when the weights are saved: their mtime, for a run whose lineage is written later
    finished = finished or (datetime.fromtimestamp(max(p.stat().st_mtime for p in saved), timezone.utc) if saved
                            else datetime.now(timezone.utc))
    started = finished - timedelta(seconds=float(train.get("wall_seconds") or 0.0))
    weights = base_weight_digests(recipe.model.name)
    return {
        "run": run_dir.name,
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finished": finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "base": {"name": recipe.model.name, "identity": base_identity(recipe.model.name, weights), "weights": weights},
        "recipe_sha256": sha256_file(run_dir / "recipe.yaml"),
        "data": {"inputs": manifest.get("inputs", []),
                 "splits": {name: split["sha256"] for name, split in manifest["splits"].items()},
                 "manifest_sha256": sha256_file(run_dir / "data" / "manifest.json")},
        "artifact": artifact,
        artifact: folder_digests(run_dir / artifact),
        "seed": recipe.train.seed,
        "threads": recipe.train.threads or torch.get_num_threads(),
        "device": (train.get("speed") or {}).get("device") or ("cuda" if torch.cuda.is_available() else "cpu"),
        "libraries": library_versions(),
        "code": code_version(),
    }
