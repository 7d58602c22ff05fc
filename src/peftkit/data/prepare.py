"""Prepare the data of a recipe: read, validate, clean, deduplicate, split, check, write `RUN/data/`.

    prepared = prepare_data(recipe.data, run_dir / "data", tokenizer=tokenizer)

Steps, in order (each one counts what it removes and writes it to `rejects.jsonl` with its reason):
1. read the built-in dataset, the file, or the fixed files of `data.files` (see `readers.py`);
   map columns, detect the record format (`formats.py`), validate every row: all problems are
   listed (first 20 in full) and stop the run, or with `on_error: skip` go to rejects;
2. normalise text (`clean.normalise`);
3. drop exact and near duplicates (of the rows train and carved val/test come from; with fixed
   files, of the train file); split with the seed (stratified by label for classification;
   fixed files are kept as given); drop train rows that repeat a val/test row (leakage);
4. measure token lengths with the model's tokenizer; rows over max_length are truncated (counted)
   or dropped (`data.truncation`); a histogram goes to `lengths.png`;
5. mix general data into train (`data.mix`), then check the chat template on every row;
6. write `{train,val,test}.jsonl`, `rejects.jsonl` and `manifest.json` (counts, sha256 of each
   split and input file, dedup/leakage counts, length statistics, template examples; for
   classification the labels per split and the majority baseline, the accuracy of always
   answering train's most common label, which a tuned classifier has to beat).

Later stages read the splits back with `read_split`, so any stage can be re-run alone.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from peftkit.catalog.datasets import BUILTIN_DATASETS, get_dataset
from peftkit.data import clean
from peftkit.data.formats import apply_columns, apply_convention, detect_format, explain_given, file_field_names
from peftkit.data.readers import read_file
from peftkit.data.records import FORMAT_TASKS, canonical, has_surrogate, record_problems, text_fields
from peftkit.errors import DataError, RunDirError
from peftkit.recipe import DataSpec

SPLITS = ("train", "val", "test")
MAX_LISTED_PROBLEMS = 20
MIX_TASKS = ("chat", "extraction")
PROGRESS_ROWS = 5000  # show progress bars from this many rows


@dataclass
class Row:
    record: dict  # canonical record of the task
    where: str  # "file.jsonl:12", "file.csv row 3 (line 4)", "bbc-news#17", "mix:chatterbot#5"


@dataclass
class PreparedData:
    task: str
    instruction: str | None
    labels: list[str] | None  # classification only, sorted
    counts: dict[str, int]
    data_dir: Path
    manifest: dict = field(default_factory=dict)


@dataclass
class _Loaded:
    task: str
    instruction: str | None
    pool: list[Row]  # rows train (and val/test unless fixed) are carved from
    fixed: dict[str, list[Row]]  # val/test given as their own files
    inputs: list[dict]
    detection: str
    problems: list[tuple[str, str, object]]  # (where, problem, raw record)


def prepare_data(spec: DataSpec, data_dir: Path, tokenizer=None, model_source: str | None = None,
                 console: Console | None = None) -> PreparedData:
    """Prepare `spec`'s data into `data_dir`; with a tokenizer also lengths and the template check."""
    console = console or Console(stderr=True, quiet=True)
    loaded = _load(spec)
    rejects: list[dict] = []
    _handle_problems(loaded.problems, spec, rejects, "invalid")
    sketches: dict = {}  # MinHash per dedup key, made once for dedup and leakage
    loaded.pool, cleaning = _dedup(loaded.pool, spec, rejects, console, sketches)
    splits = _split(loaded, spec)
    cleaning["leakage"] = _leakage(splits, spec, rejects, sketches)
    lengths = None
    mix = _mix(splits, spec, loaded.task) if spec.mix else None
    if tokenizer is not None:
        _special_tokens(splits, spec, tokenizer, rejects)
        lengths = _lengths(splits, spec, loaded, tokenizer, rejects, data_dir, console)
    labels = _check_labels(splits, spec, loaded.task, rejects)
    if not splits["train"]:
        raise DataError(f"{_name(spec)}: no training examples left ({_reasons(rejects)})")
    template = _template(splits, loaded, tokenizer, model_source) if tokenizer is not None else None

    data_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "source": _source(spec, loaded),
        "inputs": loaded.inputs,
        "format": loaded.detection,
        "task": loaded.task,
        "instruction": loaded.instruction,
        "labels": labels,
        "label_balance": label_balance(splits) if labels is not None else None,
        "seed": spec.split.seed,
        "splits": {},
        "rejects": {"count": len(rejects), "by_reason": dict(Counter(r["stage"] for r in rejects)), "file": "rejects.jsonl"},
        "cleaning": cleaning,
        "lengths": lengths,
        "mix": mix,
        "template": template,
    }
    for name, rows in splits.items():
        digest = _write_jsonl(data_dir / f"{name}.jsonl", [r.record for r in rows])
        fixed = spec.files is not None and getattr(spec.files, name) is not None
        manifest["splits"][name] = {"count": len(rows), "sha256": digest, "fixed": fixed}
    _write_jsonl(data_dir / "rejects.jsonl", rejects)
    (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    prepared = PreparedData(loaded.task, loaded.instruction, labels, {k: len(v) for k, v in splits.items()},
                            data_dir, manifest)
    console.print(summary_line(prepared))
    return prepared


def summary_line(prepared: PreparedData) -> str:
    m = prepared.manifest
    c = m.get("cleaning", {})
    parts = [f"data: {prepared.task}, " + ", ".join(f"{k} {v}" for k, v in prepared.counts.items()),
             f"rejects {m['rejects']['count']} ({_by_reason(m['rejects']['by_reason'])})",
             f"duplicates exact {c.get('exact_duplicates', 0)} near {c.get('near_duplicates', 0)}",
             f"leakage {sum(c.get('leakage', {}).values())}"]
    if m.get("lengths"):
        parts.append(f"over max_length {m['lengths']['over_max']} ({m['lengths']['truncation']})")
    if m.get("label_balance"):
        parts += _balance_parts(m["label_balance"])
    if (m.get("template") or {}).get("checked"):
        t = m["template"]
        parts.append(f"template check passed on {t['rows_checked']} rows (stop token {', '.join(t['stop_tokens'])})")
    return "; ".join(parts)


def label_balance(splits: dict[str, list[Row]]) -> dict:
    """Label counts per split and the majority baseline: the share of each split that always
    answering train's most common label (ties: the first by name) gets right, None for an empty split."""
    counts = {s: dict(sorted(Counter(r.record["label"] for r in rows).items())) for s, rows in splits.items()}
    train = counts["train"]
    majority = min(train, key=lambda label: (-train[label], label)) if train else None
    shares = {s: round(c.get(majority, 0) / sum(c.values()), 4) if c else None for s, c in counts.items()}
    return {"counts": counts, "majority": {"label": majority, **shares}}


def _balance_parts(balance: dict) -> list[str]:
    train = balance["counts"]["train"]
    total, by_count = sum(train.values()), sorted(train.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{label} {n} ({n / total:.0%})" for label, n in by_count[:10])
    more = f", … and {len(by_count) - 10} more" if len(by_count) > 10 else ""
    majority = balance["majority"]
    shares = ", ".join(f"{majority[s]:.0%} of {s}" for s in SPLITS if majority.get(s) is not None)
    return [f"labels in train: {shown}{more}", f"majority baseline {majority['label']!r}: {shares}"]


def load_prepared(data_dir: Path) -> PreparedData:
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise RunDirError(f"{data_dir}: no prepared data (manifest.json missing); run `peftkit train` first")
    m = json.loads(path.read_text(encoding="utf-8"))
    counts = {k: v["count"] for k, v in m["splits"].items()}
    return PreparedData(m["task"], m["instruction"], m["labels"], counts, data_dir, m)


def read_split(data_dir: Path, split: str) -> list[dict]:
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise RunDirError(f"{path}: missing; run `peftkit train` (it prepares the data) first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- 1. read and validate


def _load(spec: DataSpec) -> _Loaded:
    if spec.dataset in BUILTIN_DATASETS:
        return _load_builtin(spec)
    if spec.dataset is not None and not Path(spec.dataset).exists():
        raise DataError(
            f"data.dataset: '{spec.dataset}' is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) "
            "nor an existing file or folder"
        )
    paths = {"train": spec.dataset} if spec.dataset else {k: v for k, v in spec.files.model_dump().items() if v}
    problems: list[tuple[str, str, object]] = []
    splits: dict[str, list[Row]] = {}
    inputs, formats, task = [], {}, None
    for split, path in paths.items():
        rows, info, fmt, why, file_task = read_records(Path(path), spec, problems)
        if task is not None and file_task != task:
            raise DataError(f"data.files.{split}: {path} holds {fmt} records for a {file_task} task; "
                            f"data.files.train is {task}")
        task = file_task
        info["valid_rows"] = len(rows)
        if split == "train" and spec.size is not None and spec.size < len(rows):
            rows = random.Random(spec.split.seed).sample(rows, spec.size)
            info["rows_used"] = len(rows)  # data.size: a seeded sample, the rest left out on purpose
        splits[split] = rows
        inputs.append({"split": split, **info})
        formats[split] = why
    detection = formats["train"] if spec.dataset else "; ".join(f"{k}: {v}" for k, v in formats.items())
    pool = splits.pop("train")
    return _Loaded(task, spec.instruction, pool, splits, inputs, detection, problems)


def read_records(path: Path, spec: DataSpec, problems: list) -> tuple[list[Row], dict, str, str, str]:
    """Valid canonical rows of one file, its info, format, detection text and task; problems are appended."""
    raw_rows, info = read_file(path)
    raw_rows = apply_columns(raw_rows, spec.columns, str(path))
    if spec.format != "auto":
        detection = explain_given(spec.format, raw_rows)
    else:
        try:
            detection = detect_format(raw_rows, str(path))
        except DataError:
            if not spec.task:
                raise
            # no format fits most records: take the task's own, so validation names each missing field
            feeding = tuple(sorted((f for f, t in FORMAT_TASKS.items() if spec.task in t), key=lambda f: f != spec.task))
            detection = detect_format(raw_rows, str(path), feeding)
    fmt = detection.format
    task = spec.task or FORMAT_TASKS[fmt][0]
    if task not in FORMAT_TASKS[fmt]:
        raise DataError(f"data.task: {path} holds {fmt} records ({detection.explanation}); "
                        f"they can feed {' or '.join(FORMAT_TASKS[fmt])}, not {task}")
    raw_rows = apply_convention(raw_rows, detection)
    rows = []
    for raw in raw_rows:
        if raw.problem:
            problems.append((raw.where, raw.problem, raw.record))
            continue
        record = normalise_record(raw.record) if isinstance(raw.record, dict) else raw.record
        found = record_problems(record, fmt)
        if found:
            problems += [(raw.where, _column_names(file_field_names(p, detection), spec.columns), raw.record)
                         for p in found]
        else:
            rows.append(Row(canonical(record, fmt, task), raw.where))
    return rows, info.__dict__, fmt, detection.explanation, task


def normalise_record(record: dict) -> dict:
    """Text fields normalised (`clean.normalise`); messages' contents too; other values untouched.

    Text holding an unpaired surrogate is left as read: validation rejects it, and the position
    its problem names is then the position in the file's text.
    """
    def norm(text: str) -> str:
        return text if has_surrogate(text) else clean.normalise(text)

    out = {}
    for key, value in record.items():
        if isinstance(value, str):
            value = norm(value)
        elif key == "messages" and isinstance(value, list):
            value = [{**m, "content": norm(m["content"])}
                     if isinstance(m, dict) and isinstance(m.get("content"), str) else m for m in value]
        out[key] = value
    return out


def _column_names(problem: str, columns: dict[str, str]) -> str:
    field_name = problem.split(":", 1)[0]
    if field_name in columns:
        return f"{field_name} (column '{columns[field_name]}')" + problem[len(field_name):]
    return problem


def _load_builtin(spec: DataSpec) -> _Loaded:
    builtin = get_dataset(spec.dataset)
    task = spec.task or builtin.task
    if task != builtin.task:
        raise DataError(f"data.task: '{spec.dataset}' is a {builtin.task} dataset, not {task}")
    problems, rows = [], []
    for i, record in enumerate(builtin.load(spec.size, spec.split.seed)):
        record, where = normalise_record(record), f"{builtin.name}#{i}"
        found = record_problems(record, task)
        problems += [(where, p, record) for p in found]
        if not found:
            rows.append(Row(canonical(record, task, task), where))
    digest = hashlib.sha256("".join(json.dumps(r.record, ensure_ascii=False) + "\n" for r in rows).encode()).hexdigest()
    info = {"builtin": builtin.name, "source": builtin.source, "size": spec.size, "rows": len(rows) + len(problems),
            "sha256": digest}  # sha256 of the records as loaded (canonical JSONL), there is no single file
    return _Loaded(task, spec.instruction or builtin.instruction, rows, {}, [info],
                   f"built-in {task} dataset", problems)


def _handle_problems(problems: list, spec: DataSpec, rejects: list[dict], stage: str) -> None:
    """stop: raise with every problem listed (first 20 in full); skip: one reject per row."""
    if not problems:
        return
    if spec.on_error == "stop":
        listed = [f"{where}: {p}" for where, p, _ in problems[:MAX_LISTED_PROBLEMS]]
        more = len(problems) - len(listed)
        tail = f"\n… and {more} more problems" if more else ""
        rows = len({w for w, _, _ in problems})
        raise DataError(f"{len(problems)} problems in {_name(spec)} ({rows} rows):\n" + "\n".join(listed) + tail
                        + "\n(set data.on_error: skip to write these rows to rejects.jsonl and go on)")
    by_row: dict[str, list] = defaultdict(list)
    for where, p, record in problems:
        by_row[where].append((p, record))
    for where, items in by_row.items():
        rejects.append({"stage": stage, "where": where, "reason": "; ".join(p for p, _ in items), "record": items[0][1]})


# ---------------------------------------------------------------- 2. split


def _split(loaded: _Loaded, spec: DataSpec) -> dict[str, list[Row]]:
    """Seeded split of the loaded rows; fixed splits are kept, only the missing ones are carved."""
    val = 0.0 if "val" in loaded.fixed else spec.split.val
    test = 0.0 if "test" in loaded.fixed else spec.split.test
    carved = _carve(loaded.pool, val, test, spec.split.seed, loaded.task)
    return {s: loaded.fixed.get(s, carved[s]) for s in SPLITS}


def _carve(rows: list[Row], val: float, test: float, seed: int, task: str) -> dict[str, list[Row]]:
    """Seeded shuffle split; classification is stratified so every label keeps its share."""
    rng = random.Random(seed)
    if task == "classification":
        groups: dict[str, list[Row]] = defaultdict(list)
        for r in rows:
            groups[r.record["label"]].append(r)
        buckets = [groups[k] for k in sorted(groups)]
    else:
        buckets = [list(rows)]
    out: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for bucket in buckets:
        rng.shuffle(bucket)
        n_test = round(len(bucket) * test)
        n_val = round(len(bucket) * val)
        out["test"] += bucket[:n_test]
        out["val"] += bucket[n_test : n_test + n_val]
        out["train"] += bucket[n_test + n_val :]
    for split_rows in out.values():
        rng.shuffle(split_rows)
    return out


# ---------------------------------------------------------------- 3. duplicates and leakage


def _dedup(rows: list[Row], spec: DataSpec, rejects: list[dict], console: Console,
           sketches: dict) -> tuple[list[Row], dict]:
    """Exact, then near duplicates among the rows train (and carved val/test) come from; first one kept."""
    keys = [clean.dedup_key(text_fields(r.record)) for r in rows]
    exact = clean.find_exact(keys) if spec.dedup.exact else {}
    near = {}
    shared = 0  # characters of instruction every row starts with, left out of the near comparison
    if spec.dedup.near and rows:
        keys, shared = clean.without_shared_prefix(keys)
        with _progress(console, "near duplicates", len(rows) - len(exact)) as advance:
            near = clean.find_near(keys, spec.dedup, skip=set(exact), progress=advance, cache=sketches)
    for i in sorted(set(exact) | set(near)):
        if i in exact:
            j, stage, how = exact[i], "exact_duplicate", "exact duplicate"
        else:
            (j, sim), stage = near[i], "near_duplicate"
            how = f"near duplicate (estimated Jaccard {sim:.2f})"
        rejects.append({"stage": stage, "where": rows[i].where, "record": rows[i].record,
                        "reason": f"{how} of {rows[j].where}{_label_note(rows[i], rows[j])}"})
    kept = [r for i, r in enumerate(rows) if i not in exact and i not in near]
    return kept, {"exact_duplicates": len(exact), "near_duplicates": len(near), "dedup": spec.dedup.model_dump(),
                  "shared_prefix_chars": shared}


def _leakage(splits: dict[str, list[Row]], spec: DataSpec, rejects: list[dict], sketches: dict) -> dict[str, int]:
    """Train rows that are exact or near duplicates of a val/test row leave train (to rejects)."""
    train = splits["train"]
    heldout = [(s, r) for s in ("val", "test") for r in splits[s]]
    keys, _ = clean.without_shared_prefix([clean.dedup_key(text_fields(r.record)) for r in [*train, *(r for _, r in heldout)]])
    leaks = clean.find_leaks(keys[:len(train)], keys[len(train):], spec.dedup, sketches)
    counts = Counter()
    for i, (j, kind, sim) in sorted(leaks.items()):
        split, other = heldout[j]
        counts[split] += 1
        how = "exact" if kind == "exact" else f"near (estimated Jaccard {sim:.2f})"
        rejects.append({"stage": "leakage", "where": train[i].where, "record": train[i].record,
                        "reason": f"{how} duplicate of {split} row {other.where}: removed from train"})
    splits["train"] = [r for i, r in enumerate(train) if i not in leaks]
    return {s: counts.get(s, 0) for s in ("val", "test")}


@contextmanager
def _progress(console: Console, label: str, total: int):
    """A transient rich progress bar with rate and ETA for work over PROGRESS_ROWS rows; yields advance(n)."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=total < PROGRESS_ROWS) as progress:
        task = progress.add_task(label, total=total, rate="")

        def advance(n: int) -> None:
            speed = progress.tasks[task].speed
            progress.update(task, advance=n, rate=f"{speed:,.0f} rows/s" if speed else "")

        yield advance


def _label_note(a: Row, b: Row) -> str:
    la, lb = a.record.get("label"), b.record.get("label")
    return f" (labels differ: {la!r} vs {lb!r})" if la is not None and la != lb else ""


# ---------------------------------------------------------------- 4. lengths, 5. mix and template


def _lengths(splits, spec: DataSpec, loaded: _Loaded, tokenizer, rejects: list[dict], data_dir: Path,
             console: Console) -> dict:
    from peftkit.data.lengths import length_stats, save_histogram, token_lengths

    per_split, over_total, truncated_at = {}, 0, []
    stats = {}
    for name, rows in splits.items():
        with _progress(console, f"token lengths ({name})", len(rows)) as advance:
            lengths = token_lengths([r.record for r in rows], loaded.task, tokenizer, loaded.instruction, progress=advance)
        over = [i for i, n in enumerate(lengths) if n > spec.max_length]
        over_total += len(over)
        if spec.truncation == "drop":
            for i in over:
                rejects.append({"stage": "too_long", "where": rows[i].where, "record": rows[i].record,
                                "reason": f"{lengths[i]} tokens > data.max_length {spec.max_length} (truncation: drop)"})
            keep = [i for i in range(len(rows)) if i not in set(over)]
            splits[name] = [rows[i] for i in keep]
        else:
            truncated_at += [f"{rows[i].where} ({lengths[i]} tokens)" for i in over]
        per_split[name] = lengths
        stats[name] = length_stats(lengths, spec.max_length)
    histogram = save_histogram(per_split, spec.max_length, data_dir / "lengths.png", "token lengths per split")
    return {
        "tokenizer": getattr(tokenizer, "name_or_path", None),
        "max_length": spec.max_length,
        "truncation": spec.truncation,
        "over_max": over_total,
        "truncated": len(truncated_at),
        "truncated_rows": truncated_at[:MAX_LISTED_PROBLEMS],
        "dropped": over_total if spec.truncation == "drop" else 0,
        "splits": stats,
        "histogram": histogram.name,
    }


def _mix(splits: dict[str, list[Row]], spec: DataSpec, task: str) -> dict:
    """Add general chat data to train: `fraction` of the final training split comes from it."""
    mix = spec.mix
    if task not in MIX_TASKS:
        raise DataError(f"data.mix: replay data is chat; it mixes into {' or '.join(MIX_TASKS)} tasks, not {task}")
    if mix.dataset in BUILTIN_DATASETS:
        builtin = get_dataset(mix.dataset)
        if builtin.task != "chat":
            raise DataError(f"data.mix.dataset: '{mix.dataset}' is a {builtin.task} dataset; replay needs chat data")
        pool = [Row(normalise_record(r), f"mix:{builtin.name}#{i}") for i, r in enumerate(builtin.load(None, spec.split.seed))]
    else:
        problems: list = []
        pool, *_ = read_records(Path(mix.dataset), DataSpec(dataset=mix.dataset, task="chat"), problems)
        if problems:
            where, p, _ = problems[0]
            raise DataError(f"data.mix.dataset: {len(problems)} problems, first {where}: {p}")
    wanted = round(len(splits["train"]) * mix.fraction / (1 - mix.fraction))
    rng = random.Random(spec.split.seed)
    chosen = rng.sample(pool, min(wanted, len(pool)))
    splits["train"] = splits["train"] + chosen
    rng.shuffle(splits["train"])
    return {"dataset": mix.dataset, "fraction": mix.fraction, "rows": len(chosen), "wanted": wanted,
            "available": len(pool)}


def _special_tokens(splits: dict[str, list[Row]], spec: DataSpec, tokenizer, rejects: list[dict]) -> None:
    """Every row whose text holds a special token of the model: a problem (stop) or a reject (skip)."""
    from peftkit.data.template import special_token_problems

    problems = [(r.where, p, r.record) for rows in splits.values() for r in rows
                for p in special_token_problems(r.record, tokenizer)]
    _handle_problems(problems, spec, rejects, "special_token")
    bad = {w for w, _, _ in problems}
    for name in splits:
        splits[name] = [r for r in splits[name] if r.where not in bad]


def _template(splits, loaded: _Loaded, tokenizer, model_source) -> dict | None:
    from peftkit.data.template import check_templates, stop_token_ids

    stops = stop_token_ids(tokenizer, model_source)
    shown = check_templates({s: [(r.record, r.where) for r in rows] for s, rows in splits.items()},
                            loaded.task, loaded.instruction, tokenizer, stops)
    if loaded.task == "classification":
        return {"checked": False, "reason": "classification trains an encoder: no chat template"}
    return {
        "checked": True,
        "stop_tokens": sorted(tokenizer.convert_ids_to_tokens(sorted(stops))),
        "rows_checked": sum(e.rows_checked for e in shown),
        "examples": {e.split: {"where": e.where, "rendered": e.marked} for e in shown},
    }


def _check_labels(splits, spec: DataSpec, task: str, rejects: list[dict]) -> list[str] | None:
    """Labels of train; val/test rows whose label train lacks are problems (stop) or rejects (skip)."""
    if task != "classification":
        return None
    labels = sorted({r.record["label"] for r in splits["train"]})
    problems = [(r.where, f"label: {r.record['label']!r} does not occur in train (train labels: {', '.join(labels)})",
                 r.record) for s in ("val", "test") for r in splits[s] if r.record["label"] not in labels]
    _handle_problems(problems, spec, rejects, "unseen_label")
    bad = {w for w, _, _ in problems}
    for s in ("val", "test"):
        splits[s] = [r for r in splits[s] if r.where not in bad]
    return labels


# ---------------------------------------------------------------- 6. write


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    text = "".join(_jsonl_line(r) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonl_line(row: dict) -> str:
    """One JSON line, UTF-8 text as is; a rejected record with an unpaired surrogate (no UTF-8 form)
    is written with \\u escapes instead, so it reads back exactly as the file gave it."""
    line = json.dumps(row, ensure_ascii=False)
    return json.dumps(row) if has_surrogate(line) else line


def _name(spec: DataSpec) -> str:
    return spec.dataset or ", ".join(v for v in spec.files.model_dump().values() if v)


def _source(spec: DataSpec, loaded: _Loaded) -> dict:
    if spec.dataset in BUILTIN_DATASETS:
        return {"builtin": spec.dataset}
    if spec.dataset:
        return {"file": spec.dataset, "sha256": loaded.inputs[0]["sha256"]}
    return {"files": {i["split"]: i["path"] for i in loaded.inputs}}


def _by_reason(by_reason: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in by_reason.items()) or "none"


def _reasons(rejects: list[dict]) -> str:
    return "rejects: " + _by_reason(dict(Counter(r["stage"] for r in rejects)))
