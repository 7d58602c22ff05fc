"""Prepare the data of a recipe: read, validate, split, and write it into `RUN/data/`.

    prepared = prepare_data(recipe.data, run_dir / "data")

Writes `train.jsonl`, `val.jsonl`, `test.jsonl` (canonical records, see `records.py`) and
`manifest.json` (task, instruction, labels, per-split counts and sha256, source). Later stages read
the splits back with `read_split`, so any stage can be re-run alone.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from peftkit.catalog.datasets import BUILTIN_DATASETS, get_dataset
from peftkit.data.records import canonical, record_problems
from peftkit.errors import DataError, RunDirError
from peftkit.recipe import DataSpec

SPLITS = ("train", "val", "test")
MAX_LISTED_PROBLEMS = 20


@dataclass
class PreparedData:
    task: str
    instruction: str | None
    labels: list[str] | None  # classification only, sorted
    counts: dict[str, int]
    data_dir: Path


def prepare_data(spec: DataSpec, data_dir: Path) -> PreparedData:
    """Load the dataset named by `spec`, split it with the spec's seed, and write it to `data_dir`."""
    task, instruction, records, source = _load_records(spec)
    splits = _split(records, spec, task)
    if not splits["train"]:
        raise DataError(f"{spec.dataset}: no training examples left after splitting {len(records)} records")
    labels = None
    if task == "classification":
        labels = sorted({r["label"] for r in splits["train"]})
        for name in ("val", "test"):
            unseen = sorted({r["label"] for r in splits[name]} - set(labels))
            if unseen:
                raise DataError(f"{spec.dataset}: labels {unseen} occur in {name} but not in train")
    data_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "source": source,
        "task": task,
        "instruction": instruction,
        "labels": labels,
        "seed": spec.split.seed,
        "splits": {},
    }
    for name, rows in splits.items():
        path = data_dir / f"{name}.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        path.write_text(text, encoding="utf-8")
        manifest["splits"][name] = {"count": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return PreparedData(task, instruction, labels, {k: len(v) for k, v in splits.items()}, data_dir)


def load_prepared(data_dir: Path) -> PreparedData:
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise RunDirError(f"{data_dir}: no prepared data (manifest.json missing); run `peftkit train` first")
    m = json.loads(path.read_text(encoding="utf-8"))
    counts = {k: v["count"] for k, v in m["splits"].items()}
    return PreparedData(m["task"], m["instruction"], m["labels"], counts, data_dir)


def read_split(data_dir: Path, split: str) -> list[dict]:
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise RunDirError(f"{path}: missing; run `peftkit train` (it prepares the data) first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _load_records(spec: DataSpec) -> tuple[str, str | None, list[dict], dict]:
    if spec.dataset in BUILTIN_DATASETS:
        builtin = get_dataset(spec.dataset)
        task = spec.task or builtin.task
        if task != builtin.task:
            raise DataError(f"data.task: '{spec.dataset}' is a {builtin.task} dataset, not {task}")
        records = builtin.load(spec.size, spec.split.seed)
        return task, spec.instruction or builtin.instruction, records, {"builtin": builtin.name}
    path = Path(spec.dataset)
    if not path.exists():
        raise DataError(
            f"data.dataset: '{spec.dataset}' is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) "
            "nor an existing file"
        )
    if spec.task is None:
        raise DataError(f"data.task: required for the file {path} (extraction, chat or classification)")
    records = _read_jsonl(path, spec.task)
    if spec.size is not None and spec.size < len(records):
        records = random.Random(spec.split.seed).sample(records, spec.size)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return spec.task, spec.instruction, records, {"file": str(path), "sha256": digest}


def _read_jsonl(path: Path, task: str) -> list[dict]:
    """Every valid record of a JSONL file; any problem stops with file, line, field and what was found."""
    if path.is_dir() or path.suffix != ".jsonl":
        raise DataError(f"{path}: expected a .jsonl file (other formats arrive with `peftkit data prepare`)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    records, problems = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        found = record_problems(record, task)
        problems += [f"{path}:{lineno}: {p}" for p in found]
        if not found:
            records.append(canonical(record, task))
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        tail = f"\n… and {more} more problems" if more else ""
        raise DataError(f"{len(problems)} problems in {path}:\n" + "\n".join(listed) + tail)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _split(records: list[dict], spec: DataSpec, task: str) -> dict[str, list[dict]]:
    """Seeded shuffle split; classification is stratified so every label keeps its share."""
    rng = random.Random(spec.split.seed)
    if task == "classification":
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            groups[r["label"]].append(r)
        buckets = [groups[k] for k in sorted(groups)]
    else:
        buckets = [list(records)]
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for bucket in buckets:
        rng.shuffle(bucket)
        n_test = round(len(bucket) * spec.split.test)
        n_val = round(len(bucket) * spec.split.val)
        out["test"] += bucket[:n_test]
        out["val"] += bucket[n_test : n_test + n_val]
        out["train"] += bucket[n_test + n_val :]
    for rows in out.values():
        rng.shuffle(rows)
    return out
