"""`peftkit compare RECIPE --methods lora,dora,qlora,...`: which method, for this task, at what cost.

    result = compare("recipes/quickstart.yaml", ["lora", "ia3", "prefix"], overrides=["train.max_steps=20"])
    result.rows          # one dict per method (compare.json), in the order given
    result.out_dir       # runs/<recipe name>-compare-<UTC timestamp>/ : compare.json, compare.png, report.html,
                         #   compare-recipe.yaml (the resolved recipe every method started from)

Each method is the recipe with its `method:` block replaced by that method's override (METHODS; the
names and overrides agreed in the method schema). LoRA-family methods keep the recipe's own r,
alpha, dropout and target_modules; the others take their own defaults. Every method trains with the
same data, steps and seed through the normal `train` and `evaluate`, so each one is an ordinary run
directory (`<runs_dir>/<compare id>-<method>`) that every other command accepts. Each run prepares
its split from the same seeded recipe; the sha256 of every split is recorded per row and checked to be
identical across methods (a mismatch fails the comparison, since the numbers would not be comparable).

Per row: the headline task metric (tuned and base), trainable parameters and their share, peak
memory of training (peak RSS of this process, reset before each method on Linux, so it includes the
resident baseline of Python and the libraries; peak CUDA allocation on GPUs), seconds per step, and
the size of the weight files on disk (RUN/adapter; RUN/model for `full`).

Outcomes per method: `ok`; `not applicable` (the method does not apply to this model or machine:
bitsandbytes missing for qlora, or a PeftkitError from training such as an unsupported model type);
`failed` (the override does not validate, or anything unexpected — the error is recorded and the
comparison goes on with the rest). `peftkit compare` exits 1 at the end when any method failed.
"""

from __future__ import annotations

import importlib.util
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from peftkit.errors import PeftkitError, RecipeError

# Names a user types → the override of the recipe's `method:` block (see the method schema).
METHODS: dict[str, dict] = {
    "lora": {"kind": "lora"},
    "rslora": {"kind": "lora", "rslora": True},
    "dora": {"kind": "lora", "dora": True},
    "pissa": {"kind": "lora", "init": "pissa"},
    "olora": {"kind": "lora", "init": "olora"},
    "qlora": {"kind": "qlora"},
    "prefix": {"kind": "prefix"},
    "prompt": {"kind": "prompt"},
    "ia3": {"kind": "ia3"},
    "loha": {"kind": "loha"},
    "lokr": {"kind": "lokr"},
    "bottleneck": {"kind": "bottleneck"},
    "full": {"kind": "full"},
}
LORA_FAMILY = ("lora", "qlora")
LORA_SHARED = ("r", "alpha", "dropout", "target_modules")  # kept from the recipe for LoRA-family methods


class CompareError(PeftkitError):
    """Unknown method names, or runs that did not see the same data."""


@dataclass
class CompareResult:
    out_dir: Path
    rows: list[dict]
    data_sha256: dict | None
    failed: list[str] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.out_dir / "report.html"


def parse_methods(methods: str | list[str]) -> list[str]:
    """`lora,dora` → ["lora", "dora"]; an unknown or repeated name is a CompareError listing the known ones."""
    names = [m.strip().lower() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    if not names:
        raise CompareError(f"--methods: give at least one method; known: {', '.join(METHODS)}")
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise CompareError(f"--methods: unknown method {', '.join(map(repr, unknown))}; known: {', '.join(METHODS)}")
    repeated = sorted({m for m in names if names.count(m) > 1})
    if repeated:
        raise CompareError(f"--methods: {', '.join(repeated)} given more than once")
    return names


def method_block(recipe_method: dict, name: str) -> dict:
    """The `method:` block of the recipe for method `name`: the override over the recipe's LoRA
    fields for the LoRA family, the override alone (the kind's own defaults) for the others."""
    override = METHODS[name]
    if override["kind"] in LORA_FAMILY:
        return {k: recipe_method[k] for k in LORA_SHARED if k in recipe_method} | override
    return dict(override)


def not_applicable(name: str) -> str | None:
    """Why a method cannot run on this machine at all (checked before training), else None."""
    if METHODS[name]["kind"] == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return "qlora needs bitsandbytes (pip install bitsandbytes), which is not installed"
    return None


def parse_method_sets(items: list[str] | None, names: list[str]) -> dict[str, list[str]]:
    """`["full:train.lr=5e-5", ...]` → {"full": ["train.lr=5e-5"]}: overrides for one method only
    (full fine-tuning usually wants a far lower learning rate than adapters, prompt tuning a higher one)."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        name, sep, setting = item.partition(":")
        name = name.strip().lower()
        if not sep or "=" not in setting:
            raise CompareError(f"--method-set {item!r}: expected METHOD:KEY=VALUE, e.g. full:train.lr=5e-5")
        if name not in names:
            raise CompareError(f"--method-set {item!r}: '{name}' is not among --methods ({', '.join(names)})")
        out.setdefault(name, []).append(setting.strip())
    return out


def compare(recipe: str | Path, methods: str | list[str], overrides: list[str] | None = None,
            console: Console | None = None, out_dir: str | Path | None = None,
            method_sets: list[str] | None = None) -> CompareResult:
    """Train and evaluate every method on the recipe's data; write compare.json, compare.png and
    report.html to `out_dir` (default `<runs_dir>/<recipe name>-compare-<UTC timestamp>/`).

    Args:
        overrides: `key=value` for every method; method_sets: `METHOD:key=value` for one method only.
    """
    from peftkit.recipe import load_recipe

    console = console or Console(stderr=True)
    names = parse_methods(methods)
    per_method = parse_method_sets(method_sets, names)
    resolved = load_recipe(recipe, overrides)  # the user's recipe and --set values, validated once
    raw = resolved.model_dump(mode="json")
    compare_id = f"{resolved.name}-compare-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    out_dir = Path(out_dir) if out_dir is not None else Path(resolved.output.runs_dir) / compare_id
    if (out_dir / "compare.json").exists():
        raise CompareError(f"{out_dir}: already holds a comparison; give another directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    from peftkit.recipe import dump_recipe

    # the recipe every method started from (not `recipe.yaml`: the folder is a comparison, not a run)
    (out_dir / "compare-recipe.yaml").write_text(dump_recipe(resolved), encoding="utf-8")

    rows = []
    for i, name in enumerate(names, 1):
        run_id = f"{out_dir.name}-{name}"
        run_dir = Path(resolved.output.runs_dir) / run_id
        console.print(f"[bold][{i}/{len(names)}] {name}[/bold]: starting → {run_dir}")
        row = _run_method(name, raw, run_id, run_dir, console, per_method.get(name, []))
        rows.append(row)
        status = row["status"]
        if status == "ok":
            console.print(f"[bold][{i}/{len(names)}] {name}[/bold]: [green]done[/green] — {row['metric']} "
                          f"{_num(row['tuned'])} (base {_num(row['base'])}), {_num(row['seconds_per_step'], '.2f')} s/step "
                          f"→ {run_dir}")
        else:
            color = "yellow" if status == "not applicable" else "red"
            console.print(f"[bold][{i}/{len(names)}] {name}[/bold]: [{color}]{status}[/{color}] — {row['reason']}",
                          markup=True, highlight=False)

    data_sha256, mismatch = _same_data(rows)
    for row in rows:
        if row["status"] == "ok" and mismatch and row["data_sha256"] != data_sha256:
            row["status"], row["reason"] = "failed", "its data splits differ from the other methods' (sha256)"
    failed = [r["method"] for r in rows if r["status"] == "failed"]
    document = {"recipe": resolved.name, "compare_id": out_dir.name, "methods": names, "overrides": list(overrides or []),
                "method_overrides": per_method,
                "data_sha256": data_sha256, "metric": next((r["metric"] for r in rows if r.get("metric")), None),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    _write_outputs(out_dir, document)
    return CompareResult(out_dir, rows, data_sha256, failed)


def _run_method(name: str, raw: dict, run_id: str, run_dir: Path, console: Console, sets: list[str]) -> dict:
    """Train + evaluate one method; always returns a row (status ok / not applicable / failed)."""
    from peftkit.recipe import load_recipe

    row: dict = {"method": name, "override": METHODS[name], "method_overrides": sets, "run_dir": str(run_dir),
                 "status": "ok", "reason": None}
    reason = not_applicable(name)
    if reason:
        return row | {"status": "not applicable", "reason": reason}
    spec = dict(raw) | {"method": method_block(raw["method"], name),
                        "output": dict(raw["output"]) | {"run_id": run_id}}
    try:
        recipe = load_recipe(spec, sets)
    except RecipeError as exc:  # every known method should validate: the schema is out of step
        return row | {"status": "failed", "reason": f"the method override does not validate: {exc}"}
    started = time.perf_counter()
    _reset_peak_memory()
    try:
        from peftkit.evaluate.run import evaluate
        from peftkit.train.run import train

        trained = train(recipe, console=console)
        evaluate(trained.run_dir, console=console, gate=False)
    except PeftkitError as exc:  # the method does not apply here (model type, device, plan)
        return row | {"status": "not applicable", "reason": str(exc), "seconds": time.perf_counter() - started}
    except Exception as exc:  # noqa: BLE001 — recorded in the row and in RUN/compare-error.log; the others go on
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "compare-error.log").write_text(traceback.format_exc(), encoding="utf-8")
        first = (str(exc).strip().splitlines() or [""])[0]
        return row | {"status": "failed", "reason": f"{type(exc).__name__}: {first} (traceback in {run_dir / 'compare-error.log'})",
                      "seconds": time.perf_counter() - started}
    return row | _row_figures(run_dir) | {"seconds": time.perf_counter() - started}


def _row_figures(run_dir: Path) -> dict:
    """The numbers of one finished method run, from its run directory."""
    import json

    from peftkit.evaluate.report import headline_metric
    from peftkit.rundir import read_metrics

    m = read_metrics(run_dir)
    t, base, tuned = m["train"], m.get("base", {}), m.get("tuned", {})
    metric = headline_metric(tuned)
    weights = run_dir / "adapter" if (run_dir / "adapter").is_dir() else run_dir / "model"
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text(encoding="utf-8"))
    return {
        "metric": metric,
        "tuned": tuned.get(metric),
        "base": base.get(metric),
        "trainable_params": t.get("trainable_params"),
        "total_params": t.get("total_params"),
        "trainable_percent": t.get("trainable_percent"),
        "peak_rss_bytes": t.get("peak_rss_bytes"),
        **({"peak_cuda_bytes": t["peak_cuda_bytes"]} if "peak_cuda_bytes" in t else {}),
        "seconds_per_step": t.get("seconds_per_step"),
        "steps": t.get("steps"),
        "val_loss": t.get("val_loss"),
        "size_bytes": _weights_bytes(weights),
        "size_of": weights.name,
        "forgetting_passed": m.get("forgetting", {}).get("passed"),
        "data_sha256": {k: v["sha256"] for k, v in manifest["splits"].items()},
        "report": str(run_dir / "report.html") if (run_dir / "report.html").is_file() else None,
    }


def _weights_bytes(folder: Path) -> int | None:
    """Bytes of the weight files (safetensors or .bin) in RUN/adapter or RUN/model: what a method adds on
    disk, without the tokenizer files saved next to them."""
    files = [f for f in folder.glob("*") if f.suffix in (".safetensors", ".bin")] if folder.is_dir() else []
    return sum(f.stat().st_size for f in files) or None


def _same_data(rows: list[dict]) -> tuple[dict | None, bool]:
    """The split hashes shared by the finished runs (the first one's), and whether any run differs."""
    hashes = [r["data_sha256"] for r in rows if r["status"] == "ok"]
    if not hashes:
        return None, False
    return hashes[0], any(h != hashes[0] for h in hashes)


def _num(value, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def _reset_peak_memory() -> None:
    """Start each method's peak-memory figure afresh: Linux resets the process peak RSS on `5` >
    /proc/self/clear_refs (≥ 4.0); CUDA keeps its own counter."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass  # elsewhere the figure is the process peak so far (says so in the docs of this module)
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _write_outputs(out_dir: Path, document: dict) -> None:
    import json

    from peftkit.evaluate.report import build_compare_report, compare_png

    (out_dir / "compare.json").write_text(json.dumps(document, indent=2, default=float), encoding="utf-8")
    compare_png(document, out_dir / "compare.png")
    build_compare_report(document, out_dir / "report.html")
