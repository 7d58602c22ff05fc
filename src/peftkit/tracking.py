"""MLflow tracking: one MLflow run per peftkit run, in a local SQLite store by default.

The store is `sqlite:///<runs_dir>/mlflow.db` unless `output.tracking_uri` names another. Logged:
the flattened resolved recipe as params, the training numbers and loss curve as metrics, the run
directory as a tag, and the adapter folder as artifacts (a fully fine-tuned model's folder as a tag).
"""

from __future__ import annotations

import logging
from pathlib import Path

from peftkit.recipe import Recipe


def tracking_uri(recipe: Recipe) -> str:
    if recipe.output.tracking_uri:
        return recipe.output.tracking_uri
    db = (Path(recipe.output.runs_dir) / "mlflow.db").resolve()
    return f"sqlite:///{db}"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def log_training(recipe: Recipe, run_dir: Path, metrics: dict) -> str:
    """Log one MLflow run for a finished training; returns the MLflow run id (also saved in the run dir)."""
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri(recipe))
    _use_experiment(mlflow, recipe)
    with mlflow.start_run(run_name=run_dir.name) as run:
        mlflow.set_tag("peftkit.run_dir", str(run_dir.resolve()))
        mlflow.log_params(flatten(recipe.model_dump(mode="json")))
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        mlflow.log_metrics(scalars)
        for point in metrics.get("loss_history", []):
            mlflow.log_metric("loss", point["loss"], step=point["step"])
        for point in metrics.get("val_history", []):
            mlflow.log_metric("val_loss", point["val_loss"], step=point["step"])
        if (run_dir / "adapter").is_dir():
            mlflow.log_artifacts(str(run_dir / "adapter"), artifact_path="adapter")
        else:  # full fine-tuning: the whole model stays in the run directory, not copied into the store
            mlflow.set_tag("peftkit.model_dir", str((run_dir / "model").resolve()))
        run_id = run.info.run_id
    (run_dir / "mlflow_run_id").write_text(run_id, encoding="utf-8")
    return run_id


def _use_experiment(mlflow, recipe: Recipe) -> None:
    """Select the recipe's experiment; artifacts live beside the store, not in ./mlruns of the cwd."""
    if mlflow.get_experiment_by_name(recipe.name) is None:
        artifacts = (Path(recipe.output.runs_dir) / "mlartifacts").resolve()
        mlflow.create_experiment(recipe.name, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(recipe.name)


def log_evaluation(recipe: Recipe, run_dir: Path, results: dict) -> None:
    """Add base/tuned evaluation metrics to the run's MLflow run, if it has one."""
    id_file = run_dir / "mlflow_run_id"
    if not recipe.output.mlflow or not id_file.is_file():
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(recipe))
    with mlflow.start_run(run_id=id_file.read_text(encoding="utf-8").strip()):
        for side in ("base", "tuned"):
            for key, value in results.get(side, {}).items():
                if isinstance(value, (int, float)):
                    mlflow.log_metric(f"{side}.{key}", float(value))
        forgetting = results.get("forgetting", {})
        for name, metrics in forgetting.get("deltas", {}).items():
            for metric, d in metrics.items():
                mlflow.log_metric(f"forgetting.{name.replace(':', '_')}.{metric}.delta", float(d["delta"]))
        if forgetting.get("checks"):
            mlflow.set_tag("peftkit.forgetting_gate", "passed" if forgetting["passed"] else "failed")
