"""report.html: one self-contained page that answers "did it work, what did it cost".

    build_report([run_dir])                  → RUN/report.html
    build_report([run_a, run_b], out=path)   → one page comparing the runs

Everything comes from the run directory (metrics.json, recipe.yaml, eval_predictions.jsonl,
attention/), so `peftkit report RUN` rebuilds the page at any time without loading a model. Plots
are matplotlib PNGs inlined as base64 data URIs and the HTML is rendered by a Jinja2 template with
autoescaping, so the file opens anywhere, offline, and text from the data cannot inject markup.

Sections of a single-run page: verdict (the answer of verdict.py with its flags, then the first
table: tuned vs base and each trivial baseline with paired 95% intervals), run facts (data
source, method, trainable params, peak memory, time, adapter size), loss curves, base vs tuned
task metrics, per-field or per-class results (a class with recall 0 highlighted), confusion
matrices, forgetting deltas with pass/fail and warnings, side-by-side base vs tuned outputs, and
attention entropy when `peftkit inspect attention` has been run.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from peftkit.errors import RunDirError
from peftkit.evaluate.headline import headline_metric, higher_is_better
from peftkit.resources import human_bytes
from peftkit.rundir import open_run, read_metrics


@dataclass
class ReportResult:
    path: Path
    bytes: int
    seconds: float


def build_report(run_dirs: list[str | Path], out: str | Path | None = None) -> ReportResult:
    """Write the report of one run (default RUN/report.html) or a comparison of several runs
    (default <runs_dir>/compare-<run1>-vs-<run2>….html). Returns the path, its size and build time."""
    started = time.perf_counter()
    if not run_dirs:
        raise RunDirError("peftkit report: give at least one run directory")
    runs = [_load_run(Path(r)) for r in run_dirs]
    if out is None:
        if len(runs) == 1:
            out = runs[0]["dir"] / "report.html"
        else:
            out = runs[0]["dir"].parent / ("compare-" + "-vs-".join(r["id"] for r in runs) + ".html")
    out = Path(out)
    html = _render_single(runs[0]) if len(runs) == 1 else _render_compare(runs)
    out.write_text(html, encoding="utf-8")
    return ReportResult(out, out.stat().st_size, time.perf_counter() - started)


# ------------------------------------------------------------------------------------------- data


def _load_run(run_dir: Path) -> dict:
    run_dir, recipe = open_run(run_dir)
    metrics = read_metrics(run_dir)
    if "train" not in metrics:
        raise RunDirError(f"{run_dir}: no training metrics yet; run `peftkit train` first")
    predictions = []
    pred_file = run_dir / "eval_predictions.jsonl"
    if pred_file.is_file():
        with pred_file.open(encoding="utf-8") as fh:
            for line in fh:
                if len(predictions) >= recipe.eval.report_examples:
                    break
                predictions.append(json.loads(line))
    attention_file = run_dir / "attention" / "attention.json"
    attention = json.loads(attention_file.read_text(encoding="utf-8")) if attention_file.is_file() else None
    return {"dir": run_dir, "id": run_dir.name, "recipe": recipe, "metrics": metrics,
            "predictions": predictions, "attention": attention}


def _facts(run: dict) -> list[tuple[str, str]]:
    from peftkit.methods import describe_method

    r, m = run["recipe"], run["metrics"]
    t, ev = m.get("train", {}), m.get("eval", {})
    method = r.method
    targets = getattr(method, "target_modules", None)
    if targets is not None and not isinstance(targets, str):
        targets = ", ".join(targets)
    facts = [
        ("recipe", r.name),
        ("base model", r.model.name),
        ("data", f"{data_source(r.data, _manifest(run['dir']))} ({_data_counts(run['dir'])})"),
        ("method", describe_method(method) + (f", targets {targets}" if targets else "")),
        ("trainable parameters", f"{t.get('trainable_params', 0):,} ({t.get('trainable_percent', 0):.2f}%)"),
        ("model size" if "model_bytes" in t else "adapter size",
         f"{human_bytes(t['adapter_bytes'])} vs {human_bytes(t['base_model_bytes'])} base "
                         f"({t['adapter_bytes'] / t['base_model_bytes']:.1%})" if "adapter_bytes" in t else "–"),
        ("training", f"{t.get('steps', '–')} steps in {t.get('train_seconds', 0):.0f} s "
                     f"({t.get('seconds_per_step', 0):.2f} s/step, {t.get('tokens_per_second', 0):.0f} tokens/s)"),
        ("peak memory (train)", _memory(t)),
    ]
    stop = t.get("early_stopping")
    if stop:
        facts.append(("early stopping", stop.get("summary", "")))
    if ev:
        facts += [("evaluation", f"{ev.get('examples')} test examples, {ev.get('seconds', 0):.0f} s"),
                  ("peak memory (eval)", _memory(ev))]
    if "merge" in m:
        mg = m["merge"]
        facts.append(("merge parity", f"max |Δlogit| {mg['max_abs_diff']:.1e} ≤ {mg['atol']:g}: "
                                      f"{'passed' if mg['passed'] else 'FAILED'}"))
    return facts


def _memory(section: dict) -> str:
    parts = []
    if "peak_rss_bytes" in section:
        parts.append(f"{human_bytes(section['peak_rss_bytes'])} RSS")
    if "peak_cuda_bytes" in section:
        parts.append(f"{human_bytes(section['peak_cuda_bytes'])} CUDA")
    return ", ".join(parts) or "–"


def _manifest(run_dir: Path) -> dict:
    path = run_dir / "data" / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def data_source(data, manifest: dict) -> str:
    """Where a run's data came from: the built-in dataset, the file, or each split's file (data.files),
    plus what was mixed in for replay. From the manifest (what was read) or else the recipe's DataSpec."""
    source = manifest.get("source") or ({"files": {k: v for k, v in data.files.model_dump().items() if v}}
                                        if data.files else {"file": data.dataset})
    if "builtin" in source:
        text = f"{source['builtin']} (built-in)"
    elif "files" in source:
        text = "files: " + ", ".join(f"{split} {path}" for split, path in source["files"].items())
    else:
        text = f"file {source['file']}"
    mix = manifest.get("mix")
    if mix:
        text += f" + {mix['rows']} rows of {mix['dataset']} mixed in ({mix['fraction']:.0%} of train)"
    return text


def _data_counts(run_dir: Path) -> str:
    splits = _manifest(run_dir).get("splits")
    if not splits:
        return "?"
    return ", ".join(f"{k} {v['count']}" for k, v in splits.items())


def _metric_rows(base: dict, tuned: dict) -> list[dict]:
    rows = []
    for key, value in tuned.items():
        if isinstance(value, (int, float)) and key != "examples" and isinstance(base.get(key), (int, float)):
            delta = value - base[key]
            better = delta > 0 if higher_is_better(key) else delta < 0
            rows.append({"metric": key, "base": _num(base[key]), "tuned": _num(value), "delta": f"{delta:+.4f}",
                         "cls": "good" if better else "bad" if delta else ""})
    return rows


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _forgetting_rows(forgetting: dict, warnings: list[dict] | None = None) -> list[dict]:
    checks = {(c["set"], c["metric"].removeprefix("lm_eval ")): c for c in forgetting.get("checks", [])}
    warned = {(w["set"], w["metric"].removeprefix("lm_eval ")): w for w in warnings or []}
    rows = []
    for name, metrics in forgetting.get("deltas", {}).items():
        for metric, d in metrics.items():
            check = checks.get((name, metric))
            warning = warned.get((name, metric))
            change = f"{d['delta']:+.2%}" if d["relative"] else f"{d['delta'] * 100:+.2f} pts"
            limit = f"{check['threshold_field']} ≤ {check['allowed']:g}" if check else "no threshold"
            if warning:
                limit += f"; warns past {warning['field']} {warning['allowed']:g}"
            if check:
                verdict, cls = ("pass", "good") if check["passed"] else ("FAIL", "bad")
            else:
                verdict, cls = ("warning", "bad") if warning else ("–", "")
            rows.append({"set": name, "metric": metric, "base": f"{d['base']:.4f}", "tuned": f"{d['tuned']:.4f}",
                         "delta": change, "limit": limit, "verdict": verdict, "cls": cls})
    return rows


# ------------------------------------------------------------------------------------------- plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves_png(runs: list[dict]) -> str | None:
    """Train (solid) and validation (dashed, dots) loss against step, one colour per run."""
    if not any(r["metrics"]["train"].get("loss_history") or r["metrics"]["train"].get("val_history") for r in runs):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, run in enumerate(runs):
        t = run["metrics"]["train"]
        colour = f"C{i}"
        label = run["id"] if len(runs) > 1 else ""
        train = t.get("loss_history", [])
        val = t.get("val_history", [])
        if train:
            ax.plot([p["step"] for p in train], [p["loss"] for p in train], color=colour, label=f"{label} train".strip())
        if val:
            ax.plot([p["step"] for p in val], [p["val_loss"] for p in val], "o--", color=colour,
                    label=f"{label} validation".strip())
        best = (t.get("early_stopping") or {}).get("best_step")
        if best:
            ax.axvline(best, color=colour, alpha=0.4, linestyle=":", label=f"{label} best (kept)".strip())
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("loss curves")
    return _png(fig)


def metrics_png(base: dict, tuned: dict) -> str | None:
    """Base vs tuned bars for the metrics that are shares (0–1)."""
    keys = [k for k, v in tuned.items() if isinstance(v, float) and 0.0 <= v <= 1.0 and k in base
            and k not in ("loss",)]
    if not keys:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(keys)), 3.2))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [base[k] for k in keys], 0.4, label="base", color="#999")
    ax.bar([x + 0.2 for x in xs], [tuned[k] for k in keys], 0.4, label="tuned", color="#2a7")
    ax.set_xticks(list(xs), keys, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("task metrics, base vs tuned")
    return _png(fig)


def confusion_png(base: dict, tuned: dict) -> str | None:
    if "confusion_matrix" not in tuned:
        return None
    plt = _pyplot()
    labels = tuned["confusion_matrix"]["labels"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (title, scores) in zip(axes, (("base", base), ("tuned", tuned))):
        matrix = scores["confusion_matrix"]["matrix"]
        ax.imshow(matrix, cmap="Blues")
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(f"{title} confusion matrix")
    return _png(fig)


def forgetting_png(forgetting: dict) -> str | None:
    """Relative change of each general loss/perplexity (tuned vs base), with each threshold as a line."""
    bars = [(f"{name}\n{metric}", d["delta"]) for name, ms in forgetting.get("deltas", {}).items()
            for metric, d in ms.items() if d["relative"] and metric == "perplexity"]
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(bars)), 3.2))
    values = [v * 100 for _, v in bars]
    ax.bar(range(len(bars)), values, color=["#c33" if v > 0 else "#2a7" for v in values])
    ax.set_xticks(range(len(bars)), [b for b, _ in bars], fontsize=8)
    limit = forgetting.get("thresholds", {}).get("general_ppl_increase")
    if limit is not None:
        ax.axhline(limit * 100, color="#c33", linestyle="--", label=f"general_ppl_increase {limit:g}")
        ax.legend(fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("perplexity change, %")
    ax.set_title("forgetting: general perplexity, tuned vs base")
    return _png(fig)


def _attention_images(run: dict) -> list[dict]:
    """The PNGs written by `peftkit inspect attention`, inlined."""
    att = run["attention"]
    if not att:
        return []
    images = []
    for name in att.get("images", []):
        path = run["dir"] / "attention" / name
        if path.is_file():
            images.append({"name": name, "src": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")})
    return images


# ------------------------------------------------------------------------------------------- pages


def _verdict(run: dict) -> dict:
    """The verdict of metrics.json (verdict.py) as the page shows it; a run evaluated before verdicts
    existed gets its headline numbers and no answer."""
    m = run["metrics"]
    base, tuned = m.get("base", {}), m.get("tuned", {})
    key = headline_metric(tuned)
    v = m.get("verdict")
    numbers = f"{key}: base {base[key]:.4f} → tuned {tuned[key]:.4f}" if key and key in base else ""
    if v:
        label, text, worked = v["answer"].capitalize(), v["why"], {"yes": True, "no": False}.get(v["answer"])
    elif key:
        label, worked = "?", None
        text = numbers + "; no verdict recorded: rerun `peftkit eval` for baselines and confidence intervals"
    else:
        label, text, worked = "?", "not evaluated yet: run `peftkit eval`", None
    forgetting = m.get("forgetting", {})
    gate = None
    if forgetting.get("checks"):
        gate = forgetting["passed"]
    return {"metric": key, "label": label, "text": text, "short": f"{label} — {numbers}" if numbers else label,
            "worked": worked, "try": (v or {}).get("try", ""), "flags": (v or {}).get("flags", []),
            "warnings": (v or {}).get("warnings", []), "gate": gate,
            "gate_text": ("no thresholds set (eval.max_forgetting)" if gate is None else
                          "forgetting gate passed" if gate else
                          "forgetting gate FAILED: " + next(c["message"] for c in forgetting["checks"] if not c["passed"]))}


def _verdict_table(m: dict) -> dict | None:
    """The first table: tuned, the base and each trivial baseline on the verdict's metrics, with the
    paired 95% interval of tuned minus each (and McNemar's p for accuracy)."""
    from peftkit.evaluate.verdict import display_name

    v = m.get("verdict")
    if not v or not v["intervals"]:
        return None
    metrics = list(dict.fromkeys(c["metric"] for c in v["intervals"]))
    by = {(c["against"], c["metric"]): c for c in v["intervals"]}
    others = ["base"] + [name for name in dict.fromkeys(c["against"] for c in v["intervals"]) if name != "base"]
    how = {name: b["description"] for name, b in m.get("baselines", {}).items()}
    how["base"] = "the base model, no adapter"
    first = {metric: next(c for c in v["intervals"] if c["metric"] == metric) for metric in metrics}
    rows = [{"name": "tuned", "how": m.get("eval", {}).get("tuned_model", "the tuned model"),
             "cells": [(_num(first[metric]["tuned"]), "") for metric in metrics], "p": "", "outcome": "", "cls": ""}]
    for name in others:
        headline = by[(name, v["headline"]["metric"])]
        p = headline.get("mcnemar", {}).get("p_value")
        cells = [by[(name, metric)] for metric in metrics]
        rows.append({"name": display_name(name), "how": how.get(name, ""),
                     "cells": [(_num(c["other"]), "{:+.4f} [{:+.4f}, {:+.4f}]".format(c["difference"], *c["ci95"]))
                               for c in cells],
                     "p": "–" if p is None else f"{p:.2g}",
                     "outcome": headline["outcome"] + (" (decides)" if headline.get("deciding") else ""),
                     "cls": {"better": "good", "worse": "bad", "not better": "bad"}.get(headline["outcome"], "")})
    return {"metrics": metrics, "rows": rows, "mcnemar": any("mcnemar" in c for c in v["intervals"]),
            "resamples": v.get("resamples")}


def _prediction_rows(run: dict) -> list[dict]:
    rows = []
    for p in run["predictions"]:
        if "messages" in p:
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in p["messages"][:-1])
            reference = p["messages"][-1]["content"]
        elif "completion" in p:
            prompt, reference = _as_text(p["prompt"]), _as_text(p["completion"])
        else:
            prompt = p.get("input") or p.get("text", "")
            reference = p.get("output") or p.get("label", "")
        prompt = prompt if len(prompt) <= 700 else prompt[:700] + " …"
        rows.append({"prompt": prompt, "reference": reference, "base": p["base"], "tuned": p["tuned"],
                     "base_ok": p["base"].strip() == str(reference).strip(),
                     "tuned_ok": p["tuned"].strip() == str(reference).strip()})
    return rows


def _as_text(value) -> str:
    return value if isinstance(value, str) else "\n".join(f"{m['role']}: {m['content']}" for m in value)


def _render_single(run: dict) -> str:
    m = run["metrics"]
    base, tuned = m.get("base", {}), m.get("tuned", {})
    per_field = [{"name": k, "base": _num(base.get("per_field", {}).get(k, 0.0)), "tuned": _num(v)}
                 for k, v in tuned.get("per_field", {}).items()]
    per_class = [{"name": k, **{f"base_{s}": _num(base.get("per_class", {}).get(k, {}).get(s, 0.0)) for s in ("precision", "recall", "f1")},
                  **{f"tuned_{s}": _num(v[s]) for s in ("precision", "recall", "f1")}, "support": v["support"],
                  # a class present in the test rows that the model never finds
                  "base_recall_zero": v["support"] > 0 and base.get("per_class", {}).get(k, {}).get("recall") == 0,
                  "tuned_recall_zero": v["support"] > 0 and v["recall"] == 0}
                 for k, v in tuned.get("per_class", {}).items()]
    context = {
        "title": f"peftkit report — {run['id']}",
        "run": run,
        "verdict": _verdict(run),
        "verdict_table": _verdict_table(m),
        "facts": _facts(run),
        "loss_png": loss_curves_png([run]),
        "metric_rows": _metric_rows(base, tuned),
        "metrics_png": metrics_png(base, tuned) if tuned else None,
        "per_field": per_field,
        "per_class": per_class,
        "confusion_png": confusion_png(base, tuned),
        "forgetting": m.get("forgetting", {}),
        "forgetting_rows": _forgetting_rows(m.get("forgetting", {}), m.get("verdict", {}).get("warnings")),
        "forgetting_png": forgetting_png(m.get("forgetting", {})),
        "predictions": _prediction_rows(run),
        "attention": run["attention"],
        "attention_images": _attention_images(run),
    }
    return _template("single").render(**context)


def _render_compare(runs: list[dict]) -> str:
    rows = []
    general_keys = list(dict.fromkeys((name, metric) for r in runs
                                      for name, ms in r["metrics"].get("forgetting", {}).get("deltas", {}).items()
                                      for metric in ms))
    for run in runs:
        m = run["metrics"]
        v = _verdict(run)
        deltas = m.get("forgetting", {}).get("deltas", {})
        forgetting_cells = []
        for name, metric in general_keys:
            d = deltas.get(name, {}).get(metric)
            forgetting_cells.append("–" if d is None else f"{d['delta']:+.2%}" if d["relative"] else f"{d['delta'] * 100:+.2f} pts")
        t = m["train"]
        rows.append({"id": run["id"], "recipe": run["recipe"].name, "verdict": v,
                     "facts": dict(_facts(run)), "forgetting": forgetting_cells,
                     "val_loss": _num(t.get("val_loss")) if t.get("val_loss") is not None else "–"})
    context = {
        "title": "peftkit comparison — " + ", ".join(r["id"] for r in runs),
        "rows": rows,
        "general_keys": [f"{n} {m}" for n, m in general_keys],
        "loss_png": loss_curves_png(runs),
        "runs": [{"id": r["id"], "metric_rows": _metric_rows(r["metrics"].get("base", {}), r["metrics"].get("tuned", {})),
                  "forgetting_rows": _forgetting_rows(r["metrics"].get("forgetting", {}))} for r in runs],
    }
    return _template("compare").render(**context)


# ------------------------------------------------------------------------------- method comparison


def compare_png(document: dict, path: Path) -> Path:
    """Trainable parameters (log x) against the task metric, one labelled point per finished method,
    the base model's score as a dashed line. Written to `path` (and inlined in the comparison page)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    done = [r for r in document["rows"] if r["status"] == "ok" and r.get("tuned") is not None and r.get("trainable_params")]
    metric = document.get("metric") or "task metric"
    # methods at the same point share one label; labels of nearby points are stacked so they stay readable
    points: dict[tuple, list[str]] = {}
    for r in done:
        points.setdefault((r["trainable_params"], r["tuned"]), []).append(r["method"])
    ys = [y for _, y in points] or [0.0]
    span = (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float]] = []
    for (x, y), names in sorted(points.items()):
        ax.scatter(x, y, s=40)
        near = sum(1 for px, py in placed if abs(math.log10(x) - math.log10(px)) < 0.35 and abs(y - py) < 0.04 * span)
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(5, 4 + 11 * near), fontsize=9)
        placed.append((x, y))
    bases = [r["base"] for r in done if r.get("base") is not None]
    if bases:
        ax.axhline(bases[0], color="#888", linestyle="--", linewidth=1, label=f"base model ({bases[0]:.3g})")
        ax.legend(loc="best", fontsize=8)
    if done:
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no method finished", ha="center", va="center", transform=ax.transAxes)
    better = "higher is better" if higher_is_better(metric) else "lower is better"
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{metric} ({better})")
    ax.set_title(f"{document['recipe']}: task metric vs trainable parameters", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    path = Path(path)
    fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def build_compare_report(document: dict, out: Path) -> ReportResult:
    """The page of `peftkit compare`: one row per method (status, task metric, cost), the plot, and
    links to each method's own run report. `document` is compare.json; the plot is compare.png next to `out`."""
    import os

    started = time.perf_counter()
    out = Path(out)
    png = out.parent / "compare.png"
    rows = []
    for r in document["rows"]:
        link = os.path.relpath(r["report"], out.parent) if r.get("report") else None
        run_link = os.path.relpath(r["run_dir"], out.parent)
        rows.append({**r, "link": link, "run_link": run_link,
                     "tuned_text": _num(r.get("tuned")) if r.get("tuned") is not None else "–",
                     "base_text": _num(r.get("base")) if r.get("base") is not None else "–",
                     "trainable_text": (f"{r['trainable_params']:,} ({r['trainable_percent']:.3g}%)"
                                        if r.get("trainable_params") is not None else "–"),
                     "memory_text": _memory(r) if r.get("peak_rss_bytes") else "–",
                     "speed_text": f"{r['seconds_per_step']:.2f}" if r.get("seconds_per_step") is not None else "–",
                     "size_text": f"{human_bytes(r['size_bytes'])} ({r['size_of']})" if r.get("size_bytes") else "–",
                     "cls": {"ok": "", "not applicable": "none", "failed": "bad"}[r["status"]]})
    context = {"title": f"peftkit method comparison — {document['compare_id']}", "doc": document, "rows": rows,
               "plot": _file_png(png) if png.is_file() else None}
    out.write_text(_template("methods").render(**context), encoding="utf-8")
    return ReportResult(out, out.stat().st_size, time.perf_counter() - started)


def _file_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _template(name: str):
    from jinja2 import Environment, select_autoescape

    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    body = {"single": _SINGLE, "compare": _COMPARE, "methods": _METHODS}[name]
    return env.from_string(_BASE.replace("{{BODY}}", body))


_BASE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;padding:0 16px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#186a3b;font-weight:600} .bad{color:#b03a2e;font-weight:600}
.verdict{padding:10px 14px;border-radius:6px;margin:6px 0} .verdict.good{background:#e8f6ee} .verdict.bad{background:#fbeaea}
.verdict.none{background:#f3f3f3}
pre{white-space:pre-wrap;margin:0;font-size:12px;max-width:420px} img{max-width:100%}
</style></head><body>
{{BODY}}
</body></html>"""

_SINGLE = """<h1>{{ title }}</h1>
<h2>Did it work?</h2>
<div class="verdict {{ 'good' if verdict.worked else 'bad' if verdict.worked is not none else 'none' }}" id="verdict-task">
  {{ verdict.label }} — {{ verdict.text }}</div>
{% if verdict.flags or verdict.warnings %}<ul id="verdict-flags">{% for f in verdict.flags %}<li class="bad">flag {{ f.name }}: {{ f.message }}</li>{% endfor %}
{% for w in verdict.warnings %}<li class="bad">forgetting warning ({{ w.field }}): {{ w.message }}</li>{% endfor %}</ul>{% endif %}
{% if verdict.try %}<p id="verdict-try">Try: {{ verdict.try }}</p>{% endif %}
{% if verdict_table %}<table id="verdict-table"><tr><th>compared with</th><th>how</th>{% for mt in verdict_table.metrics %}<th>{{ mt }}</th>
<th>tuned − it, 95% CI</th>{% endfor %}{% if verdict_table.mcnemar %}<th>McNemar p</th>{% endif %}<th>{{ verdict.metric }}</th></tr>
{% for r in verdict_table.rows %}<tr><td>{{ r.name }}</td><td>{{ r.how }}</td>{% for c in r.cells %}<td class="num">{{ c[0] }}</td><td class="num">{{ c[1] }}</td>{% endfor %}
{% if verdict_table.mcnemar %}<td class="num">{{ r.p }}</td>{% endif %}<td class="{{ r.cls }}">{{ r.outcome }}</td></tr>{% endfor %}</table>
<p>Intervals: paired bootstrap over the test rows{% if verdict_table.resamples %} ({{ verdict_table.resamples }} resamples){% endif %}, tuned minus
each on the same resampled rows; "better" needs the whole interval above 0{% if verdict_table.mcnemar %} and McNemar's exact p below 0.05{% endif %}.</p>{% endif %}
<div class="verdict {{ 'good' if verdict.gate else 'bad' if verdict.gate is not none else 'none' }}" id="verdict-gate">{{ verdict.gate_text }}</div>

<h2>What did it cost?</h2>
<table id="facts">{% for k, v in facts %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>

{% if loss_png %}<h2>Loss curves</h2><img id="loss-curves" alt="train and validation loss" src="{{ loss_png }}">{% endif %}

{% if metric_rows %}<h2>Task metrics, base vs tuned</h2>
<table id="task-metrics"><tr><th>metric</th><th>base</th><th>tuned</th><th>change</th></tr>
{% for r in metric_rows %}<tr><td>{{ r.metric }}</td><td class="num">{{ r.base }}</td><td class="num">{{ r.tuned }}</td>
<td class="num {{ r.cls }}">{{ r.delta }}</td></tr>{% endfor %}</table>
{% if metrics_png %}<img id="metrics-chart" alt="task metrics" src="{{ metrics_png }}">{% endif %}{% endif %}

{% if per_field %}<h2>Per field</h2><table id="per-field"><tr><th>field</th><th>base</th><th>tuned</th></tr>
{% for r in per_field %}<tr><td>{{ r.name }}</td><td class="num">{{ r.base }}</td><td class="num">{{ r.tuned }}</td></tr>{% endfor %}</table>{% endif %}

{% if per_class %}<h2>Per class</h2><table id="per-class"><tr><th>class</th><th>support</th><th>base P</th><th>base R</th><th>base F1</th>
<th>tuned P</th><th>tuned R</th><th>tuned F1</th></tr>
{% for r in per_class %}<tr><td>{{ r.name }}</td><td class="num">{{ r.support }}</td><td class="num">{{ r.base_precision }}</td>
<td class="num{{ ' bad recall-zero' if r.base_recall_zero }}">{{ r.base_recall }}</td><td class="num">{{ r.base_f1 }}</td><td class="num">{{ r.tuned_precision }}</td>
<td class="num{{ ' bad recall-zero' if r.tuned_recall_zero }}">{{ r.tuned_recall }}</td><td class="num">{{ r.tuned_f1 }}</td></tr>{% endfor %}</table>
{% if per_class|selectattr('tuned_recall_zero')|list %}<p class="bad" id="recall-zero">Recall 0 (tuned): {{ per_class|selectattr('tuned_recall_zero')|map(attribute='name')|join(', ') }}: the model never predicts it correctly.</p>{% endif %}{% endif %}
{% if confusion_png %}<img id="confusion" alt="confusion matrices" src="{{ confusion_png }}">{% endif %}

<h2>Forgetting: general ability, base vs tuned</h2>
{% if forgetting_rows %}<table id="forgetting"><tr><th>set</th><th>metric</th><th>base</th><th>tuned</th><th>change</th><th>threshold</th><th>gate</th></tr>
{% for r in forgetting_rows %}<tr><td>{{ r.set }}</td><td>{{ r.metric }}</td><td class="num">{{ r.base }}</td><td class="num">{{ r.tuned }}</td>
<td class="num">{{ r.delta }}</td><td>{{ r.limit }}</td><td class="{{ r.cls }}">{{ r.verdict }}</td></tr>{% endfor %}</table>
<p>Sets: {% for name, s in forgetting.sets.items() %}{{ name }} ({{ s.kind }}{% if s.examples %}, {{ s.examples }} examples{% endif %}{% if s.source %}, {{ s.source }}{% endif %}){{ '; ' if not loop.last }}{% endfor %}.
Perplexity and loss changes are relative to the base; accuracy changes are in points.</p>
{% if forgetting_png %}<img id="forgetting-chart" alt="forgetting deltas" src="{{ forgetting_png }}">{% endif %}
{% else %}<p>{{ forgetting.skipped or 'No general suite was scored.' }}</p>{% endif %}

{% if predictions %}<h2>Base vs tuned on test examples</h2>
<table id="examples"><tr><th>input</th><th>reference</th><th>base</th><th>tuned</th></tr>
{% for p in predictions %}<tr><td><pre>{{ p.prompt }}</pre></td><td><pre>{{ p.reference }}</pre></td>
<td class="{{ 'good' if p.base_ok }}"><pre>{{ p.base }}</pre></td><td class="{{ 'good' if p.tuned_ok }}"><pre>{{ p.tuned }}</pre></td></tr>{% endfor %}</table>{% endif %}

{% if attention %}<h2>Attention entropy</h2>
<p>Text: <q>{{ attention.text }}</q> ({{ attention.tokens|length }} tokens). Entropy in nats, averaged over query positions;
normalised entropy divides each row by log(number of visible keys). Collapsed: normalised ≤ {{ attention.collapsed_below }};
diffuse: ≥ {{ attention.diffuse_above }}.</p>
<table id="attention-changed"><tr><th>layer</th><th>head</th><th>base entropy</th><th>tuned entropy</th><th>change</th></tr>
{% for h in attention.most_changed %}<tr><td>{{ h.layer }}</td><td>{{ h.head }}</td><td class="num">{{ '%.4f'|format(h.base) }}</td>
<td class="num">{{ '%.4f'|format(h.tuned) }}</td><td class="num">{{ '%+.4f'|format(h.change) }}</td></tr>{% endfor %}</table>
<p>Collapsed heads (tuned): {{ attention.tuned.collapsed|length }}; diffuse heads (tuned): {{ attention.tuned.diffuse|length }};
base: {{ attention.base.collapsed|length }} collapsed, {{ attention.base.diffuse|length }} diffuse.</p>
{% for img in attention_images %}<img class="attention" alt="{{ img.name }}" src="{{ img.src }}">{% endfor %}{% endif %}
<p style="color:#777;font-size:12px">Written by peftkit from {{ run.dir }}. Rebuild with <code>peftkit report {{ run.dir }}</code>.</p>
"""

_COMPARE = """<h1>{{ title }}</h1>
<h2>Runs side by side</h2>
<table id="compare"><tr><th>run</th><th>recipe</th><th>task metric</th><th>gate</th><th>val loss</th><th>method</th>
<th>trainable</th><th>adapter</th><th>training</th>{% for k in general_keys %}<th>Δ {{ k }}</th>{% endfor %}</tr>
{% for r in rows %}<tr><td>{{ r.id }}</td><td>{{ r.recipe }}</td><td class="{{ 'good' if r.verdict.worked else 'bad' if r.verdict.worked is not none }}">{{ r.verdict.short }}</td>
<td class="{{ 'good' if r.verdict.gate else 'bad' if r.verdict.gate is not none }}">{{ 'pass' if r.verdict.gate else 'FAIL' if r.verdict.gate is not none else '–' }}</td>
<td class="num">{{ r.val_loss }}</td><td>{{ r.facts['method'] }}</td><td>{{ r.facts['trainable parameters'] }}</td>
<td>{{ r.facts['adapter size'] }}</td><td>{{ r.facts['training'] }}</td>
{% for c in r.forgetting %}<td class="num">{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
{% if loss_png %}<h2>Loss curves</h2><img id="loss-curves" alt="loss curves of every run" src="{{ loss_png }}">{% endif %}
{% for run in runs %}<h2>{{ run.id }}</h2>
<table class="task-metrics"><tr><th>metric</th><th>base</th><th>tuned</th><th>change</th></tr>
{% for r in run.metric_rows %}<tr><td>{{ r.metric }}</td><td class="num">{{ r.base }}</td><td class="num">{{ r.tuned }}</td><td class="num {{ r.cls }}">{{ r.delta }}</td></tr>{% endfor %}</table>
{% if run.forgetting_rows %}<table class="forgetting"><tr><th>set</th><th>metric</th><th>base</th><th>tuned</th><th>change</th><th>gate</th></tr>
{% for r in run.forgetting_rows %}<tr><td>{{ r.set }}</td><td>{{ r.metric }}</td><td class="num">{{ r.base }}</td><td class="num">{{ r.tuned }}</td>
<td class="num">{{ r.delta }}</td><td class="{{ r.cls }}">{{ r.verdict }}</td></tr>{% endfor %}</table>{% endif %}{% endfor %}
"""

_METHODS = """<h1>{{ title }}</h1>
<p>Recipe <b>{{ doc.recipe }}</b>{% if doc.overrides %} with {{ doc.overrides|join(', ') }}{% endif %}: every method trained
with the same data, steps and seed{% if doc.data_sha256 %} (splits sha256: {% for k, v in doc.data_sha256.items() %}{{ k }} {{ v[:12] }}…{{ ', ' if not loop.last }}{% endfor %}){% endif %}.
Task metric: <b>{{ doc.metric or '–' }}</b> on the test split.</p>
<h2>Methods side by side</h2>
<table id="methods"><tr><th>method</th><th>status</th><th>{{ doc.metric or 'task metric' }}</th><th>base</th><th>trainable parameters</th>
<th>peak memory (train)</th><th>s/step</th><th>size on disk</th><th>run</th></tr>
{% for r in rows %}<tr><td>{{ r.method }}</td><td class="{{ r.cls }}">{{ r.status }}{% if r.reason %}: {{ r.reason }}{% endif %}</td>
<td class="num">{{ r.tuned_text }}</td><td class="num">{{ r.base_text }}</td><td class="num">{{ r.trainable_text }}</td>
<td class="num">{{ r.memory_text }}</td><td class="num">{{ r.speed_text }}</td><td class="num">{{ r.size_text }}</td>
<td>{% if r.link %}<a href="{{ r.link }}">report</a> · {% endif %}<a href="{{ r.run_link }}">{{ r.run_dir }}</a></td></tr>{% endfor %}</table>
{% if plot %}<h2>Task metric vs trainable parameters</h2><img id="methods-plot" alt="task metric against trainable parameters" src="{{ plot }}">{% endif %}
<p style="color:#777;font-size:12px">Written by <code>peftkit compare</code>; the rows are in compare.json next to this page.</p>
"""
