"""`peftkit data inspect FILE` and `peftkit data prepare RECIPE`: look at data before training on it.

    report = inspect_file(Path("reviews.csv"), columns={"text": "review", "label": "sentiment"})
    report.format, report.valid, report.problems, report.lengths, report.histogram
    prepared = prepare_recipe("recipes/quickstart.yaml")     # runs/<id>/data/, as `peftkit train` makes it

Inspect reads the file the way `prepare` does (same readers, column mapping, detection and
validation) but never stops at problems: it counts them all and lists them. For classification
it counts the labels and the majority baseline (the share of the most common label: the accuracy
a classifier has to beat). It also counts exact and near duplicates inside the file and token
lengths with a model's tokenizer (default: the built-in model that fits the detected task), and
saves a length histogram as PNG.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from peftkit.data import clean
from peftkit.data.lengths import length_stats, save_histogram, token_lengths
from peftkit.data.prepare import PreparedData, prepare_data, read_records
from peftkit.data.records import text_fields
from pydantic import ValidationError

from peftkit.errors import RecipeError
from peftkit.recipe import DataSpec, DedupSpec, ModelSpec, Recipe, _format_validation_error, load_recipe


@dataclass
class Inspection:
    path: str
    kind: str
    sha256: str
    format: str
    explanation: str
    task: str
    rows: int  # rows read (valid or not)
    valid: int
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, problem), all of them
    exact_duplicates: int = 0
    near_duplicates: int = 0
    labels: dict[str, int] | None = None
    majority: tuple[str, float] | None = None  # most common label (ties: first by name), its share of valid rows
    tokenizer: str | None = None
    max_length: int | None = None
    lengths: dict | None = None
    histogram: Path | None = None


def default_model(task: str) -> str:
    return "minilm-l6" if task == "classification" else "smollm2-135m"


def inspect_file(path: Path, columns: dict[str, str] | None = None, fmt: str = "auto", task: str | None = None,
                 model: str | None = None, max_length: int = 512, histogram: Path | None = None,
                 dedup: DedupSpec | None = None) -> Inspection:
    """Read, detect and validate every row of `path`; count duplicates and token lengths; save a histogram."""
    from peftkit.loading import load_tokenizer

    try:
        spec = DataSpec(dataset=str(path), columns=columns or {}, format=fmt, task=task, on_error="skip",
                        max_length=max_length)
    except ValidationError as exc:
        raise RecipeError(_format_validation_error("data inspect", exc)) from None
    problems: list = []
    rows, info, detected, why, task = read_records(Path(path), spec, problems)
    report = Inspection(info["path"], info["kind"], info["sha256"], detected, why, task, info["rows"], len(rows),
                        [(w, p) for w, p, _ in problems])
    keys = [clean.dedup_key(text_fields(r.record)) for r in rows]
    dedup = dedup or DedupSpec()
    exact = clean.find_exact(keys)
    report.exact_duplicates = len(exact)
    report.near_duplicates = len(clean.find_near(clean.without_shared_prefix(keys)[0], dedup, skip=set(exact))) if rows else 0
    if task == "classification":
        report.labels = dict(sorted(Counter(r.record["label"] for r in rows).items()))
        if report.labels:
            top = min(report.labels, key=lambda label: (-report.labels[label], label))
            report.majority = (top, report.labels[top] / len(rows))
    if rows:
        model = model or default_model(task)
        tokenizer = load_tokenizer(ModelSpec(name=model))
        lengths = token_lengths([r.record for r in rows], task, tokenizer)
        report.tokenizer, report.max_length = model, max_length
        report.lengths = length_stats(lengths, max_length)
        target = histogram or Path(Path(path).name + ".lengths.png")  # in the working directory
        report.histogram = save_histogram({Path(path).name: lengths}, max_length, target,
                                          f"{Path(path).name}: tokens per example ({model})")
    return report


def prepare_recipe(recipe: Recipe | str | Path, overrides: list[str] | None = None,
                   console: Console | None = None) -> tuple[Path, PreparedData]:
    """Prepare a recipe's data into a new run directory (`runs/<id>/data/`) with the model's tokenizer."""
    from peftkit.catalog.models import resolve_model
    from peftkit.loading import load_tokenizer
    from peftkit.rundir import new_run_dir

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    run_dir = new_run_dir(recipe)
    tokenizer = load_tokenizer(recipe.model)
    prepared = prepare_data(recipe.data, run_dir / "data", tokenizer=tokenizer,
                            model_source=resolve_model(recipe.model.name), console=console)
    return run_dir, prepared
