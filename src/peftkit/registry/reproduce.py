"""`peftkit reproduce NAME@v`: retrain a registered version from its recorded recipe and data, and compare.

    result = reproduce(Registry("runs/registry"), "booking-extractor@v1", runs_dir="runs")
    result.equal_adapter      # adapter_model.safetensors sha256 bit for bit
    result.rows               # what, recorded, reproduced, same?

Steps: verify the version (files, signature, base weights against the provenance); refuse when an
input data file's sha256 is no longer the recorded one; train the stored recipe.yaml again into a new
run directory (same seed, and `train.threads` set to the recorded thread count: CPU kernels reduce in
an order that depends on it); refuse when the prepared splits differ from the recorded ones; then
compare each adapter file's sha256 and the training (and with `evaluate`, the test) metrics within the
tolerance the provenance records. On CPU with the same threads and libraries the adapter is expected
bit for bit; on a GPU, kernels that reduce in a varying order make it differ in the last bits, so the
metrics within tolerance are the test there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from peftkit.errors import RegistryError
from peftkit.registry.digests import folder_digests, sha256_file
from peftkit.registry.provenance import REPRODUCE_TOLERANCE, dependency_digests, headline_metrics, recorded_metrics
from peftkit.registry.verify import verify_version


@dataclass
class ReproduceResult:
    """The new run and how it compares with the registered version."""

    ref: str
    run_dir: Path
    rows: list[dict] = field(default_factory=list)  # {"what", "recorded", "reproduced", "same"}
    seconds: float = 0.0

    @property
    def equal_adapter(self) -> bool:
        return all(r["same"] for r in self.rows if r["what"].startswith("adapter/") and r["what"].endswith(".safetensors"))

    @property
    def metrics_within_tolerance(self) -> bool:
        return all(r["same"] for r in self.rows if not r["what"].startswith("adapter/"))


def within(recorded: float, reproduced: float, tolerance: dict) -> bool:
    return abs(reproduced - recorded) <= tolerance["atol"] + tolerance["rtol"] * abs(recorded)


def check_inputs(statement: dict) -> None:
    """Refuse when an input data file that exists here no longer has the recorded sha256."""
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    for dep in deps:
        if dep.get("annotations", {}).get("role") != "input-data":
            continue
        path = Path(dep.get("uri", ""))
        if path.is_file() and sha256_file(path) != dep["digest"]["sha256"]:
            raise RegistryError(f"{path}: sha256 {sha256_file(path)} now, {dep['digest']['sha256']} recorded when the "
                                "version was trained: the input changed, so this would not be a reproduction")


def reproduce(registry, ref: str, runs_dir: str | Path = "runs", evaluate: bool = False, actor: str | None = None,
              console: Console | None = None) -> ReproduceResult:
    """Retrain `ref` from its stored recipe and data; compare adapter sha256 and metrics; audited."""
    import time

    from peftkit.recipe import load_recipe
    from peftkit.train.run import train

    console = console or Console(stderr=True)
    version = registry.resolve(ref)
    verified = verify_version(registry, version)
    statement = verified.statement
    check_inputs(statement)
    internal = statement["predicate"]["buildDefinition"]["internalParameters"]
    tolerance = internal.get("reproduceTolerance", REPRODUCE_TOLERANCE)
    run_id = f"{version.name}-v{version.version}-reproduce-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    recipe = load_recipe(version.path / "recipe.yaml", [f"output.runs_dir={runs_dir}", f"output.run_id={run_id}",
                                                         "output.mlflow=false", f"train.threads={internal['threads']}"])
    started = time.perf_counter()
    run_dir = train(recipe, console=console, force=True).run_dir
    if evaluate:
        from peftkit.evaluate.run import evaluate as run_evaluate

        run_evaluate(run_dir, console=console, gate=False, report=False)
    result = ReproduceResult(version.ref, run_dir, seconds=time.perf_counter() - started)

    manifest = json.loads((run_dir / "data" / "manifest.json").read_text(encoding="utf-8"))
    recorded_splits = {k.removeprefix("data/").removesuffix(".jsonl"): v
                       for k, v in dependency_digests(statement, "prepared-split").items()}
    for split, digest in recorded_splits.items():
        now = manifest["splits"].get(split, {}).get("sha256")
        if now != digest:
            raise RegistryError(f"{run_dir}/data/{split}.jsonl: sha256 {now}, {digest} recorded for {version.ref}: "
                                "preparing the recorded data gave another split, so the runs cannot be compared")
    recorded_files = {k.removeprefix("adapter/"): v for k, v in
                      ((s["name"], s["digest"]["sha256"]) for s in statement["subject"])}
    new_files = folder_digests(run_dir / "adapter")
    for rel in sorted(recorded_files.keys() | new_files.keys()):
        old, new = recorded_files.get(rel), new_files.get(rel)
        result.rows.append({"what": f"adapter/{rel}", "recorded": old, "reproduced": new, "same": old == new})
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    new_metrics = headline_metrics(metrics)
    for key, old in recorded_metrics(statement).items():
        if key.startswith("base.") or (key.startswith("tuned.") and not evaluate) or key not in new_metrics:
            continue
        new = new_metrics[key]
        result.rows.append({"what": key, "recorded": old, "reproduced": new, "same": within(old, new, tolerance)})
    registry.audit.append("reproduce", version.ref, digests={"adapter_model.safetensors": new_files.get(
        "adapter_model.safetensors")}, details={"run": run_dir.name, "equal_adapter": result.equal_adapter,
                                                "metrics_within_tolerance": result.metrics_within_tolerance},
                          actor=actor)
    return result
