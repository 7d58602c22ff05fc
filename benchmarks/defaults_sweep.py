"""Do the recipe defaults learn on data peftkit was not built on? Train and evaluate the minimal recipe
(model, files, task: nothing else) on each outside set, optionally with overrides, and tabulate the
verdict against the trivial baselines with its 95% interval.

    python benchmarks/defaults_sweep.py --out /tmp/defaults                        # every set, defaults
    python benchmarks/defaults_sweep.py --out /tmp/defaults --sets vader-nyt \\
        --variant lr1e-3:train.lr=1e-3 --variant epochs1:train.epochs=1            # compare settings

Each (set, variant) is an ordinary run directory under <out>/runs; one JSON line per result is appended
to <out>/results.jsonl and the table (markdown) is printed at the end. Classification sets train the
built-in encoder (minilm-l6), extraction sets the built-in decoder (smollm2-135m), both with LoRA.
Times are wall seconds on this machine for train + eval; the machine's other load is not controlled,
so compare times only within one invocation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from outside_sets import load_all, write  # noqa: E402

MODELS = {"classification": "minilm-l6", "extraction": "smollm2-135m"}


def minimal_recipe(name: str, task: str, folder: Path, runs: Path) -> dict:
    """What a user writes first: the model, their two files, the task. Everything else is a default."""
    return {
        "name": name,
        "model": {"name": MODELS[task]},
        "data": {"files": {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")}, "task": task},
        "output": {"runs_dir": str(runs)},
    }


def summarize(run_dir: Path, seconds: float) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    verdict = metrics.get("verdict") or {}
    head = verdict.get("headline") or {}
    deciding = next((i for i in verdict.get("intervals", []) if i.get("deciding") and i["against"] != "base"), {})
    tuned = metrics.get("tuned", {})
    return {
        "verdict": verdict.get("answer"),
        "metric": head.get("metric"),
        "tuned": head.get("tuned"),
        "base": head.get("base"),
        "baseline_name": head.get("best_baseline"),
        "baseline": head.get("baseline"),
        "difference": deciding.get("difference"),
        "ci95": deciding.get("ci95"),
        "macro_f1": tuned.get("macro_f1"),
        "flags": [f.get("name", f) if isinstance(f, dict) else f for f in verdict.get("flags", [])],
        "train_steps": metrics.get("train", {}).get("steps"),
        "epochs": metrics.get("train", {}).get("epochs"),
        "seconds": round(seconds, 1),
        "run": str(run_dir),
    }


def run_one(set_name: str, task: str, folder: Path, out: Path, variant: str, overrides: list[str]) -> dict:
    from peftkit.evaluate.run import evaluate
    from peftkit.train.run import train

    recipe_path = out / "recipes" / f"{set_name}.yaml"
    recipe_path.parent.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(yaml.safe_dump(minimal_recipe(set_name, task, folder, out / "runs"), sort_keys=False))
    start = time.perf_counter()
    result = train(recipe_path, overrides=overrides)
    run_dir = Path(getattr(result, "run_dir", result))
    evaluate(run_dir)
    row = {"set": set_name, "task": task, "variant": variant, "overrides": overrides,
           **summarize(run_dir, time.perf_counter() - start)}
    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return row


def table(rows: list[dict], sets: dict) -> str:
    lines = ["| set | rows train/test | classes | variant | trivial baseline | tuned | difference, 95% CI | macro-F1 "
             "| verdict | flags | epochs, steps | time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        s = sets[r["set"]]
        classes = len({x["label"] for x in s.train}) if s.task == "classification" else "-"
        ci = f"{r['difference']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]" if r.get("ci95") else "-"
        f1 = f"{r['macro_f1']:.3f}" if r.get("macro_f1") is not None else "-"
        lines.append(
            f"| {r['set']} | {len(s.train)}/{len(s.test)} | {classes} | {r['variant']} | "
            f"{r['baseline_name']} {r['baseline']:.3f} | {r['metric']} {r['tuned']:.3f} | {ci} | {f1} | {r['verdict']} "
            f"| {', '.join(r['flags']) or '-'} | {r['epochs']}, {r['train_steps']} | {r['seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sets", default="", help="Comma-separated set names (default: all).")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:key=value[,key=value...]; default: the defaults alone.")
    parser.add_argument("--no-defaults", action="store_true", help="Run only the --variant settings.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (train.threads of every run).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    sets = {s.name: s for s in load_all()}
    folders = write(list(sets.values()), args.out / "data")
    chosen = [n for n in args.sets.split(",") if n] or list(sets)
    variants = [] if args.no_defaults else [("defaults", [])]
    for v in args.variant:
        name, _, items = v.partition(":")
        variants.append((name, [i for i in items.split(",") if i]))
    rows = []
    for name in chosen:
        for variant, overrides in variants:
            machine = [f"train.threads={args.threads}"]  # how many cores it may use, not a learning setting
            rows.append(run_one(name, sets[name].task, folders[name], args.out, variant, machine + overrides))
            print(table(rows[-1:], sets), flush=True)
    print(table(rows, sets))


if __name__ == "__main__":
    main()
