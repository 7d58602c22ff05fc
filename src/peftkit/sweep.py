"""`peftkit sweep RECIPE --grid method.r=4,8,16 --grid train.lr=5e-4,1e-3`: which settings, at what cost.

    result = sweep("recipes/bbc-news-lora.yaml", ["method.r=4,8", "train.lr=1e-3"], overrides=["train.max_steps=20"])
    result.rows          # one dict per trial (sweep.json), in the order they ran
    result.best          # the best trial that passed the forgetting gate, or None
    result.out_dir       # runs/<recipe name>-sweep-<UTC timestamp>/ : sweep.json, pareto.png, report.html

The search space is the grid: every `--grid KEY=V1,V2,...` is one recipe field and its values
(parsed as YAML, like `--set`). `search="grid"` runs every combination; `search="optuna"` runs
`trials` of them chosen by Optuna's TPE sampler (seeded with the recipe's seed) maximising (or, for
a loss, minimising) the headline task metric, each value a categorical choice. Every combination is
validated against the recipe schema before anything trains.

Each trial is an ordinary run (`<runs_dir>/<sweep id>-tNN`, the recipe plus the trial's `--set`
values) trained and evaluated by the same path as `peftkit compare` (peftkit.compare's figures per
row: task metric tuned and base, trainable parameters, peak memory, s/step, size), with its own
report.html. The forgetting gate applies to every trial: a trial whose forgetting check failed is
`gate failed`, is drawn hollow and is never the best. The best trial is the one with the best headline
metric among those that passed (ties: fewer trainable parameters). The page plots the metric against
trainable parameters and against s/step with each Pareto front (no other trial is at least as good
and cheaper), the best trial marked.

`parallel=K` runs K trials at a time, each in its own process (spawned, so each has a clean torch)
with the machine's cores split between them.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from peftkit.errors import PeftkitError, RecipeError

SEARCHES = ("grid", "optuna")


class SweepError(PeftkitError):
    """A grid that cannot be swept: bad `--grid` syntax, a value the recipe rejects, a bad trial count."""


@dataclass
class SweepResult:
    out_dir: Path
    rows: list[dict]
    best: dict | None
    failed: list[str] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.out_dir / "report.html"


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`["method.r=4,8", "train.lr=1e-3"]` → {"method.r": ["4", "8"], "train.lr": ["1e-3"]} (order kept)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not choices:
            raise SweepError(f"--grid {item!r}: expected KEY=V1,V2,... such as method.r=4,8,16")
        if key in grid:
            raise SweepError(f"--grid {key}: given twice; put all its values in one --grid {key}=...")
        if len(set(choices)) != len(choices):
            raise SweepError(f"--grid {item!r}: a value is repeated")
        grid[key] = choices
    if not grid:
        raise SweepError("peftkit sweep: give at least one --grid KEY=V1,V2,...")
    return grid


def combinations(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the first key varying slowest."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def trial_sets(params: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in params.items()]


def sweep(recipe: str | Path, grid: list[str], overrides: list[str] | None = None, search: str = "grid",
          trials: int | None = None, parallel: int = 1, console: Console | None = None,
          out_dir: str | Path | None = None) -> SweepResult:
    """Train and evaluate the recipe at each setting of the grid (or `trials` chosen by Optuna); write
    sweep.json, pareto.png and report.html to `out_dir` (default `<runs_dir>/<name>-sweep-<UTC timestamp>/`)."""
    from peftkit.recipe import dump_recipe, load_recipe

    console = console or Console(stderr=True)
    space = parse_grid(grid)
    if search not in SEARCHES:
        raise SweepError(f"--search {search!r}: expected one of {', '.join(SEARCHES)}")
    if parallel < 1:
        raise SweepError(f"--parallel {parallel}: expected 1 or more trials at a time")
    resolved = load_recipe(recipe, overrides)
    combos = combinations(space)
    for params in combos:  # every setting must validate before anything trains
        try:
            load_recipe(resolved.model_dump(mode="json"), trial_sets(params))
        except RecipeError as exc:
            raise SweepError(f"--grid {', '.join(trial_sets(params))}: {exc}") from None
    if search == "grid" and trials is not None and trials != len(combos):
        raise SweepError(f"--trials {trials}: a grid search runs all {len(combos)} combinations; use --search optuna "
                         "to run fewer")
    if search == "optuna" and (trials is None or not 1 <= trials <= len(combos)):
        raise SweepError(f"--trials {trials}: --search optuna needs 1 to {len(combos)} trials (the grid's combinations)")

    sweep_id = f"{resolved.name}-sweep-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    out_dir = Path(out_dir) if out_dir is not None else Path(resolved.output.runs_dir) / sweep_id
    if (out_dir / "sweep.json").exists():
        raise SweepError(f"{out_dir}: already holds a sweep; give another directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep-recipe.yaml").write_text(dump_recipe(resolved), encoding="utf-8")
    runner = _Runner(resolved.model_dump(mode="json"), out_dir.name, Path(resolved.output.runs_dir), parallel, console)
    if search == "grid":
        rows = runner.run_all(combos)
    else:
        rows = _optuna(runner, space, trials, resolved.train.seed)
    runner.close()

    _gate_and_same_data(rows)
    best = best_trial(rows)
    for row in rows:
        row["best"] = row is best
    document = {"recipe": resolved.name, "sweep_id": out_dir.name, "grid": space, "search": search,
                "trials": len(rows), "parallel": parallel, "overrides": list(overrides or []),
                "metric": next((r["metric"] for r in rows if r.get("metric")), None),
                "best": best["trial"] if best else None,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    (out_dir / "sweep.json").write_text(json.dumps(document, indent=2, default=float), encoding="utf-8")
    write_report(document, out_dir)
    return SweepResult(out_dir, rows, best, [r["trial"] for r in rows if r["status"] == "failed"])


class _Runner:
    """Runs trials in this process (parallel=1) or K at a time in spawned processes; numbers them t01, t02…"""

    def __init__(self, raw: dict, sweep_id: str, runs_dir: Path, parallel: int, console: Console):
        self.raw, self.sweep_id, self.runs_dir, self.console = raw, sweep_id, runs_dir, console
        self.parallel, self.count = parallel, 0
        self.pool = None
        if parallel > 1:
            import multiprocessing

            self.pool = ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn"))
        self.threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
                           // parallel)

    def run_all(self, combos: list[dict[str, str]]) -> list[dict]:
        rows: list[dict] = []
        for start in range(0, len(combos), self.parallel):
            rows += self.run_batch(combos[start:start + self.parallel])
        return rows

    def run_batch(self, batch: list[dict[str, str]]) -> list[dict]:
        jobs = []
        for params in batch:
            self.count += 1
            trial = f"t{self.count:02d}"
            run_id = f"{self.sweep_id}-{trial}"
            self.console.print(f"[bold][{trial}][/bold] {', '.join(trial_sets(params))}: starting → "
                               f"{self.runs_dir / run_id}")
            jobs.append((trial, params, run_id))
        if self.pool is None:
            rows = [run_trial(self.raw, trial, params, run_id, None, self.console) for trial, params, run_id in jobs]
        else:
            futures = [self.pool.submit(run_trial, self.raw, trial, params, run_id, self.threads)
                       for trial, params, run_id in jobs]
            rows = [f.result() for f in futures]
        for row in rows:
            self._say(row)
        return rows

    def _say(self, row: dict) -> None:
        if row["status"] == "ok":
            self.console.print(f"[bold][{row['trial']}][/bold] [green]done[/green] — {row['metric']} {_num(row['tuned'])} "
                               f"(base {_num(row['base'])}), {_num(row['seconds_per_step'], '.2f')} s/step")
        else:
            self.console.print(f"[bold][{row['trial']}][/bold] [red]{row['status']}[/red] — {row['reason']}",
                               markup=True, highlight=False)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def run_trial(raw: dict, trial: str, params: dict[str, str], run_id: str, threads: int | None,
              console: Console | None = None) -> dict:
    """Train + evaluate one trial as an ordinary run; always returns a row (ok / failed / not applicable).

    Runs in a worker process when `threads` is given (then torch gets that many threads)."""
    from peftkit.compare import _reset_peak_memory, _row_figures
    from peftkit.recipe import load_recipe

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    console = console or Console(stderr=True, quiet=True)
    spec = dict(raw) | {"output": dict(raw["output"]) | {"run_id": run_id}}
    recipe = load_recipe(spec, trial_sets(params))
    run_dir = Path(recipe.output.runs_dir) / run_id
    row: dict = {"trial": trial, "params": params, "run_dir": str(run_dir), "status": "ok", "reason": None}
    started = time.perf_counter()
    _reset_peak_memory()
    try:
        from peftkit.evaluate.run import evaluate
        from peftkit.train.run import train

        trained = train(recipe, console=console)
        evaluate(trained.run_dir, console=console, gate=False)  # the gate is applied to the row (below)
    except PeftkitError as exc:
        return row | {"status": "not applicable", "reason": str(exc), "seconds": time.perf_counter() - started}
    except Exception as exc:  # noqa: BLE001 — recorded in the row and RUN/sweep-error.log; the other trials go on
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "sweep-error.log").write_text(traceback.format_exc(), encoding="utf-8")
        first = (str(exc).strip().splitlines() or [""])[0]
        return row | {"status": "failed", "reason": f"{type(exc).__name__}: {first} (traceback in "
                                                    f"{run_dir / 'sweep-error.log'})", "seconds": time.perf_counter() - started}
    return row | _row_figures(run_dir) | {"seconds": time.perf_counter() - started}


def _optuna(runner: _Runner, space: dict[str, list[str]], trials: int, seed: int) -> list[dict]:
    """`trials` distinct combinations chosen by TPE, `runner.parallel` at a time (ask, run, tell)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # always maximise: _objective negates a loss
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    rows: list[dict] = []
    seen: dict[tuple, dict] = {}
    attempts = 0
    while len(rows) < trials:
        batch: list[dict[str, str]] = []
        asked = []
        while len(batch) < min(runner.parallel, trials - len(rows)) and attempts < 50 * trials:
            attempts += 1
            t = study.ask()
            params = {k: t.suggest_categorical(k, v) for k, v in space.items()}
            key = tuple(params.values())
            if key in seen or params in batch:  # TPE may propose a setting again: answer it without training
                _tell(study, t, _objective(seen.get(key)))
                continue
            batch.append(params)
            asked.append(t)
        if not batch:
            break
        for t, row in zip(asked, runner.run_batch(batch)):
            row["optuna_trial"] = t.number
            seen[tuple(row["params"].values())] = row
            _tell(study, t, _objective(row))
            rows.append(row)
    return rows


def _tell(study, trial, value: float | None) -> None:
    import optuna

    if value is None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, value)


def _objective(row: dict | None) -> float | None:
    """What Optuna maximises: the headline metric, negated for a loss; None when the trial did not finish."""
    from peftkit.evaluate.headline import higher_is_better

    if not row or row.get("status") != "ok" or row.get("tuned") is None:
        return None
    return row["tuned"] if higher_is_better(row["metric"]) else -row["tuned"]


def _gate_and_same_data(rows: list[dict]) -> None:
    """A finished trial whose forgetting check failed is `gate failed`; one whose data differs is `failed`."""
    from peftkit.compare import _same_data

    for row in rows:
        if row["status"] == "ok" and row.get("forgetting_passed") is False:
            row["status"], row["reason"] = "gate failed", "forgetting over eval.max_forgetting (see its report)"
    data_sha256, mismatch = _same_data([r for r in rows if r["status"] in ("ok", "gate failed")])
    for row in rows:
        if row["status"] in ("ok", "gate failed") and mismatch and row["data_sha256"] != data_sha256:
            row["status"], row["reason"] = "failed", "its data splits differ from the other trials' (sha256)"


def best_trial(rows: list[dict]) -> dict | None:
    """The trial with the best headline metric among those that passed the gate; ties: fewer trainable params."""
    from peftkit.evaluate.headline import higher_is_better

    done = [r for r in rows if r["status"] == "ok" and r.get("tuned") is not None]
    if not done:
        return None
    sign = 1 if higher_is_better(done[0]["metric"]) else -1
    return max(done, key=lambda r: (sign * r["tuned"], -(r.get("trainable_params") or 0)))


def pareto_front(rows: list[dict], cost: str) -> list[dict]:
    """Finished trials no other finished trial beats: at least as good a metric at no more `cost`, one strictly."""
    from peftkit.evaluate.headline import higher_is_better

    done = [r for r in rows if r["status"] in ("ok", "gate failed") and r.get("tuned") is not None
            and r.get(cost) is not None]
    if not done:
        return []
    sign = 1 if higher_is_better(done[0]["metric"]) else -1

    def beats(a: dict, b: dict) -> bool:
        good, cheap = sign * a["tuned"], a[cost]
        return good >= sign * b["tuned"] and cheap <= b[cost] and (good > sign * b["tuned"] or cheap < b[cost])

    front = [r for r in done if not any(beats(o, r) for o in done if o is not r)]
    return sorted(front, key=lambda r: r[cost])


# ------------------------------------------------------------------------------------------- report
def pareto_png(document: dict) -> bytes | None:
    """Two panels: metric vs trainable parameters and vs s/step; front as a step line, the best starred."""
    rows = [r for r in document["rows"] if r["status"] in ("ok", "gate failed") and r.get("tuned") is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, cost, label, log in ((axes[0], "trainable_params", "trainable parameters", True),
                                 (axes[1], "seconds_per_step", "seconds per step", False)):
        for r in rows:
            passed = r["status"] == "ok"
            ax.scatter(r[cost], r["tuned"], s=45, facecolors="tab:blue" if passed else "none", edgecolors="tab:blue",
                       zorder=3)
            ax.annotate(r["trial"], (r[cost], r["tuned"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto_front(rows, cost)
        if len(front) > 1:
            ax.step([r[cost] for r in front], [r["tuned"] for r in front], where="post", color="tab:orange",
                    label="Pareto front", zorder=2)
        best = next((r for r in rows if r.get("best")), None)
        if best:
            ax.scatter(best[cost], best["tuned"], marker="*", s=260, color="tab:red", label=f"best ({best['trial']})",
                       zorder=4)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{document['metric']} (tuned)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{document['sweep_id']}: hollow = forgetting gate failed")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{{ d.sweep_id }}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
tr.best{background:#fff3cd;font-weight:bold}tr.bad{color:#999}</style></head><body>
<h1>Sweep {{ d.sweep_id }}</h1>
<p>Recipe <b>{{ d.recipe }}</b>, {{ d.search }} search over {{ grid }}, {{ d.trials }} trials
({{ d.parallel }} at a time){% if d.overrides %}, with {{ d.overrides|join(", ") }}{% endif %}.
Best: <b>{{ d.best or "none passed the forgetting gate" }}</b> on {{ d.metric }}.</p>
{% if png %}<img alt="Pareto plots" src="data:image/png;base64,{{ png }}">{% endif %}
<table><tr><th>trial</th>{% for k in d.grid %}<th>{{ k }}</th>{% endfor %}<th>status</th><th>{{ d.metric }}</th>
<th>base</th><th>trainable</th><th>s/step</th><th>peak memory</th><th>forgetting</th><th>run</th></tr>
{% for r in d.rows %}<tr class="{{ 'best' if r.best else ('bad' if r.status != 'ok' else '') }}">
<td>{{ r.trial }}{% if r.best %} ★{% endif %}</td>{% for k in d.grid %}<td>{{ r.params[k] }}</td>{% endfor %}
<td>{{ r.status }}{% if r.reason %}: {{ r.reason }}{% endif %}</td><td>{{ fmt(r.tuned) }}</td><td>{{ fmt(r.base) }}</td>
<td>{{ "{:,}".format(r.trainable_params) if r.trainable_params else "–" }}</td><td>{{ fmt(r.seconds_per_step, ".2f") }}</td>
<td>{{ size(r.peak_rss_bytes) }}</td><td>{{ {True: "passed", False: "failed"}.get(r.forgetting_passed, "–") }}</td>
<td>{% if r.report %}<a href="{{ rel(r.report) }}">{{ r.run_dir.split("/")[-1] }}</a>{% else %}{{ r.run_dir.split("/")[-1] }}{% endif %}</td></tr>
{% endfor %}</table></body></html>"""


def write_report(document: dict, out_dir: Path) -> Path:
    """pareto.png and report.html (self-contained, autoescaped) in `out_dir`."""
    import jinja2

    from peftkit.resources import human_bytes

    png = pareto_png(document)
    if png:
        (out_dir / "pareto.png").write_bytes(png)
    env = jinja2.Environment(autoescape=True)
    html = env.from_string(_PAGE).render(
        d=document, png=base64.b64encode(png).decode() if png else None,
        grid="; ".join(f"{k} ∈ {{{', '.join(v)}}}" for k, v in document["grid"].items()),
        fmt=_num, size=lambda b: human_bytes(b) if b else "–",
        rel=lambda p: os.path.relpath(p, out_dir))
    path = out_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def _num(value, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)
