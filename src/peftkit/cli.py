"""The `peftkit` command: one thin subcommand per stage; the work is in the library functions.

    peftkit quickstart                 train + eval + merge recipes/quickstart.yaml, one table
    peftkit train RECIPE [--set k=v]   new run directory with an adapter
    peftkit eval RUN                   base vs tuned on the test split + forgetting gate + report.html
    peftkit eval RUN --data FILE       base vs tuned on another labelled file (RUN/evals/<file stem>/)
    peftkit predict RUN --input FILE --out FILE   batch inference with the tuned model, as eval scored it
    peftkit report RUN [RUN2 ...]      rebuild RUN/report.html, or one page comparing runs
    peftkit inspect attention RUN --text "..."   attention entropy per layer/head, base vs tuned
    peftkit merge RUN [--requantize nf4|int8]   merged safetensors + parity check (+ quantized copy)
    peftkit export RUN --for vllm [--merge]     the adapter as vLLM loads it + the exact `vllm serve` command
    peftkit compare RECIPE --methods lora,ia3,...  train + eval each method on the same data, one table
    peftkit recipe show RECIPE         the resolved recipe, every default filled in
    peftkit data inspect FILE          format, counts, problems, duplicates, token lengths (+ PNG)
    peftkit data prepare RECIPE        validated, cleaned, deduplicated, split data in runs/<id>/data
    peftkit plan [RECIPE] [--model ...] will it fit, what will it cost, which method (nothing loaded)
    peftkit serve --base M --adapter NAME=RUN   one base, many adapters, an OpenAI-compatible API
    peftkit models | datasets | runs   what is built in, what has run

A user mistake (PeftkitError) prints one red line and exits with status 1; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from peftkit.errors import PeftkitError

app = typer.Typer(help="Parameter-efficient fine-tuning that proves it helped.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
recipe_app = typer.Typer(help="Inspect recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
inspect_app = typer.Typer(help="Look inside a tuned model.", no_args_is_help=True)
app.add_typer(inspect_app, name="inspect")
data_app = typer.Typer(help="Inspect and prepare data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err = Console(stderr=True)

SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", "-s", help="Override a recipe field: --set train.lr=1e-4 (repeatable).")
]
RunArg = Annotated[Path, typer.Argument(help="A run directory, e.g. runs/quickstart-20261123-101500.")]


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    # bitsandbytes (imported by peft when installed) reports an optional CPU kernel package it lacks
    warnings.filterwarnings("ignore", message=".*gemm_4bit_forward.*")
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()


@app.command()
def train(recipe: Annotated[str, typer.Argument(help="Recipe YAML path or shipped recipe name.")], set_: SetOption = None,
          force: Annotated[bool, typer.Option("--force", help="Train even when the plan says it will not fit.")] = False):
    """Train an adapter: prepare data, load the base model, add LoRA, train, save RUN/adapter."""
    from peftkit.train.run import train as run_train

    _quiet_libraries()
    result = run_train(recipe, overrides=set_ or [], console=err, force=force)
    console.print(f"adapter: {result.run_dir / 'adapter'}")


@app.command("eval")
def eval_(run: RunArg, set_: SetOption = None,
          data: Annotated[Optional[Path], typer.Option(
              help="Score on this labelled file (read like the run's data) instead of the test split; results go "
                   "to RUN/evals/<file stem>/, RUN/metrics.json is left as it is; the general suite is skipped.")] = None):
    """Score base and tuned on the test split and the general suite; write RUN/metrics.json and
    RUN/report.html. Prints the verdict (yes / no / not distinguishable against trivial baselines and the
    base, with 95% intervals) and its flags. Exits 1 naming the threshold when the forgetting gate
    (eval.max_forgetting) fails, or naming the gate when one of eval.fail_on does."""
    from peftkit.errors import ForgettingGateError, VerdictGateError
    from peftkit.evaluate.run import evaluate

    _quiet_libraries()
    try:
        results = evaluate(run, console=err, overrides=set_ or [], data=data)
    except (ForgettingGateError, VerdictGateError) as exc:
        if getattr(exc, "results", None):
            _print_eval(exc.results)
        raise
    _print_eval(results)
    if data is not None:
        console.print(f"{results['eval']['examples']} examples of {data} (the general suite is scored by `peftkit eval "
                      f"RUN` only); results: {results['metrics_path']}")


@app.command()
def predict(
    run: RunArg,
    input_: Annotated[Path, typer.Option("--input", help="Rows to answer (.jsonl, .json, .csv, .tsv, .parquet): the "
                                                         "task's input field, e.g. input, messages, prompt or text.")],
    out: Annotated[Path, typer.Option(help="JSONL to write: each input row plus `prediction` (and `probabilities`).")],
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, help="Rows per batch (default eval.batch_size, the batches eval used, so answers match eval's).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Predict only the first N rows.")] = None,
):
    """Batch inference with the run's tuned model: the prompts, chat template and greedy decoding that
    `peftkit eval` used. Classification also writes the probability of every label."""
    from peftkit.predict import predict as run_predict

    _quiet_libraries()
    result = run_predict(run, input_, out, console=err, batch_size=batch_size, limit=limit)
    console.print(f"predictions: {result.out_path} ({result.rows} rows by {result.tuned_model}, "
                  f"{result.seconds:.1f} s, {result.rows_per_second:.2f} rows/s)")


def _print_eval(results: dict) -> None:
    console.print(_base_vs_tuned_table(results["base"], results["tuned"]))
    forgetting = results.get("forgetting", {})
    if forgetting.get("deltas"):
        console.print(_forgetting_table(forgetting))
    if "verdict" in results:
        _print_verdict(results["verdict"])
    if "report" in results:
        console.print(f"report: {results['report']}")


def _print_verdict(verdict: dict) -> None:
    """The intervals behind the verdict, then the verdict line, its flags, warnings and what to try."""
    from peftkit.evaluate.verdict import display_name, verdict_line

    if verdict["intervals"]:
        table = Table("tuned vs", "metric", "tuned", "it", "difference", "95% CI", "McNemar p", "outcome",
                      title="baselines and base, paired on the test rows", title_justify="left")
        for c in verdict["intervals"]:
            p = c.get("mcnemar", {}).get("p_value")
            table.add_row(display_name(c["against"]), c["metric"], _fmt(c["tuned"]), _fmt(c["other"]),
                          f"{c['difference']:+.4f}", "[{:+.4f}, {:+.4f}]".format(*c["ci95"]),
                          "–" if p is None else f"{p:.2g}", ("* " if c.get("deciding") else "") + c["outcome"])
        console.print(table)
    colour = {"yes": "green", "no": "red"}.get(verdict["answer"], "yellow")
    console.print(f"[bold {colour}]did it work? {escape(verdict_line(verdict))}[/bold {colour}]", highlight=False)
    for flag in verdict["flags"]:
        console.print(f"[red]flag {flag['name']}:[/red] {escape(flag['message'])}", highlight=False)
    for warning in verdict["warnings"]:
        console.print(f"[yellow]forgetting warning:[/yellow] {escape(warning['message'])}", highlight=False)
    if verdict["try"]:
        console.print(f"try: {escape(verdict['try'])}", highlight=False)


def _forgetting_table(forgetting: dict) -> Table:
    table = Table("general set", "metric", "base", "tuned", "change", "gate", title="forgetting", title_justify="left")
    verdicts = {(c["set"], c["metric"].removeprefix("lm_eval ")): c["passed"] for c in forgetting.get("checks", [])}
    for name, metrics in forgetting["deltas"].items():
        for metric, d in metrics.items():
            change = f"{d['delta']:+.2%}" if d["relative"] else f"{d['delta'] * 100:+.2f} pts"
            passed = verdicts.get((name, metric))
            gate = "–" if passed is None else "[green]pass[/green]" if passed else "[red]FAIL[/red]"
            table.add_row(name, metric, _fmt(d["base"]), _fmt(d["tuned"]), change, gate)
    return table


@app.command()
def report(
    runs_: Annotated[list[Path], typer.Argument(metavar="RUN...", help="One run (its report.html) or several (one comparison page).")],
    out: Annotated[Optional[Path], typer.Option(help="Where to write the page (default: RUN/report.html, or <runs>/compare-….html).")] = None,
):
    """Rebuild RUN/report.html from the run directory, or compare several runs in one page."""
    from peftkit.evaluate.report import build_report
    from peftkit.resources import human_bytes

    result = build_report(runs_, out)
    console.print(f"report: {result.path} ({human_bytes(result.bytes)}, built in {result.seconds:.2f}s)")


@inspect_app.command("attention")
def inspect_attention(
    run: RunArg,
    text: Annotated[str, typer.Option(help="The text to run through base and tuned.")],
    layers: Annotated[Optional[str], typer.Option(help="Layers to draw as heatmaps, e.g. 0,5 (default: the heads that changed most).")] = None,
    heads: Annotated[Optional[str], typer.Option(help="Heads to draw in those layers, e.g. 0,3 (default: all).")] = None,
    top: Annotated[int, typer.Option(help="How many most-changed heads to list.")] = 5,
):
    """Attention entropy per layer and head for base and tuned: heatmaps, collapsed/diffuse heads,
    the heads that changed most. Writes RUN/attention/ and adds it to RUN/report.html."""
    from peftkit.evaluate.attention import inspect_attention as run_inspect
    from peftkit.evaluate.report import build_report

    _quiet_libraries()
    result = run_inspect(run, text, _int_list(layers, "--layers"), _int_list(heads, "--heads"), top)
    s = result.summary
    table = Table("layer", "head", "base H", "tuned H", "change", title="heads whose entropy changed most (nats)",
                  title_justify="left")
    for h in s["most_changed"]:
        table.add_row(str(h["layer"]), str(h["head"]), f"{h['base']:.4f}", f"{h['tuned']:.4f}", f"{h['change']:+.4f}")
    console.print(table)
    for side in ("base", "tuned"):
        console.print(f"{side}: {len(s[side]['collapsed'])} collapsed heads, {len(s[side]['diffuse'])} diffuse heads "
                      f"(of {s['layers'] * s['heads']})")
    console.print(f"images: {result.out_dir}")
    if "train" in _read_json(Path(run) / "metrics.json"):
        console.print(f"report: {build_report([run]).path}")


def _int_list(value: str | None, option: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise PeftkitError(f"{option}: expected comma-separated integers such as 0,3; got {value!r}") from None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


@app.command()
def merge(
    run: RunArg,
    requantize: Annotated[Optional[str], typer.Option(
        help="Also quantize the merged model with bitsandbytes: nf4 (4-bit) or int8; saved to RUN/merged-nf4 or "
             "RUN/merged-int8 with its own parity figures.")] = None,
):
    """Merge the adapter into the base weights (RUN/merged) with a logits parity check. QLoRA runs are
    merged into the base reloaded in model.dtype (never 4-bit), and the price of dequantizing is reported."""
    from peftkit.export.merge import merge as run_merge

    _quiet_libraries()
    run_merge(run, console=err, requantize=requantize)


@app.command()
def export(
    run: RunArg,
    for_: Annotated[str, typer.Option("--for", help="The serving engine to export for: vllm.")],
    merge_: Annotated[bool, typer.Option("--merge", help="Serve the parity-checked merged model (RUN/merged) instead of "
                                                         "base + adapter: the way out for settings vLLM refuses.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Folder to write (default: RUN/export-vllm/NAME).")] = None,
    name: Annotated[Optional[str], typer.Option(help="The model name clients request (default: the recipe's name).")] = None,
    max_loras: Annotated[int, typer.Option(help="--max-loras of the command: how many adapters one batch may mix.")] = 1,
):
    """Write the adapter as vLLM loads it and print the exact `vllm serve` command (stdout), after checking every
    setting vLLM refuses: DoRA, modules_to_save, bias, rank above 512, lm_head/embeddings, PiSSA/OLoRA/LoftQ init, non-LoRA kinds."""
    from peftkit.errors import ExportError
    from peftkit.export.vllm import export_for_vllm

    if for_ != "vllm":
        raise ExportError(f"--for {for_!r}: expected vllm (the only serving engine peftkit exports for so far)")
    _quiet_libraries()
    result = export_for_vllm(run, out=out, name=name, merge=merge_, max_loras=max_loras, console=err)
    console.print(result.command, markup=False, highlight=False, soft_wrap=True)


@app.command()
def compare(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML path or shipped recipe name.")],
    methods: Annotated[str, typer.Option(help="Comma-separated: lora, rslora, dora, pissa, olora, qlora, prefix, prompt, "
                                              "ia3, loha, lokr, bottleneck, full.")] = "lora,ia3,prefix",
    set_: SetOption = None,
    method_set: Annotated[Optional[list[str]], typer.Option(
        "--method-set", help="METHOD:KEY=VALUE override for one method only, e.g. full:train.lr=5e-5 (repeatable).")] = None,
):
    """Train and evaluate several methods on the same data and steps; one table, compare.json, a plot of
    task metric vs trainable parameters and report.html in runs/<recipe>-compare-<timestamp>/.
    Exits 1 at the end when a method failed for an unexpected reason (the others still run)."""
    from peftkit.compare import compare as run_compare
    from peftkit.resources import human_bytes

    _quiet_libraries()
    result = run_compare(recipe, methods, overrides=set_ or [], console=err, method_sets=method_set or [])
    metric = next((r["metric"] for r in result.rows if r.get("metric")), None) or "task metric"
    table = _table("method", "status", metric, "base", "trainable", "peak memory", "s/step", "size", "run")
    table.title, table.title_justify = f"peftkit compare — {result.out_dir}", "left"
    for r in result.rows:
        if r["status"] != "ok":
            color = "red" if r["status"] == "failed" else "yellow"
            table.add_row(r["method"], f"[{color}]{r['status']}[/{color}]", escape(r["reason"] or ""), "", "", "", "", "",
                          Path(r["run_dir"]).name)
            continue
        table.add_row(r["method"], "[green]ok[/green]", _fmt(r["tuned"]), _fmt(r["base"]),
                      f"{r['trainable_params']:,} ({r['trainable_percent']:.3g}%)",
                      human_bytes(r["peak_rss_bytes"]) if r.get("peak_rss_bytes") else "–",
                      f"{r['seconds_per_step']:.2f}", f"{human_bytes(r['size_bytes'])} ({r['size_of']})" if r.get("size_bytes") else "–",
                      Path(r["run_dir"]).name)
    console.print(table)
    console.print(f"compare.json, compare.png, report: {result.out_dir}")
    if result.failed:
        err.print(f"[red]failed: {', '.join(result.failed)} (see the rows above)[/red]")
        raise typer.Exit(1)


@app.command()
def quickstart(set_: SetOption = None):
    """Run recipes/quickstart.yaml end to end (train, eval, merge) and print one table."""
    from peftkit.quickstart import quickstart as run_quickstart

    _quiet_libraries()
    summary = run_quickstart(overrides=set_ or [], console=err)
    console.print(summary.table())


@recipe_app.command("show")
def recipe_show(recipe: str, set_: SetOption = None):
    """Print the resolved recipe with every default filled in."""
    from peftkit.recipe import dump_recipe, load_recipe

    console.print(dump_recipe(load_recipe(recipe, set_ or [])), end="", markup=False, highlight=False)


@recipe_app.command("list")
def recipe_list():
    """List the recipes shipped in recipes/."""
    from peftkit.recipe import load_recipe, shipped_recipes

    table = _table("recipe", "model", "data", "description")
    for name in shipped_recipes():
        r = load_recipe(name)
        table.add_row(name, r.model.name, r.data.dataset, r.description)
    console.print(table)


@data_app.command("inspect")
def data_inspect(
    file: Annotated[Path, typer.Argument(help="A data file (.jsonl, .jsonl.gz, .json, .csv, .tsv, .parquet) or a `datasets` folder.")],
    column: Annotated[Optional[list[str]], typer.Option("--column", "-c", help="Map a field to your column: -c text=review (repeatable).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto | instruction | chat | completion | preference | classification | extraction")] = "auto",
    task: Annotated[Optional[str], typer.Option(help="The task the data is for (default: implied by the format).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Tokenizer for lengths (default: the built-in model for the task).")] = None,
    max_length: Annotated[int, typer.Option(help="Count rows longer than this many tokens.")] = 512,
    histogram: Annotated[Optional[Path], typer.Option(help="Where to save the length histogram PNG.")] = None,
):
    """What is in a data file: format, counts, problems, duplicates, token lengths; saves a histogram PNG."""
    from peftkit.data.inspect import inspect_file
    from peftkit.errors import RecipeError

    _quiet_libraries()
    columns = {}
    for item in column or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise RecipeError(f"--column {item!r}: expected FIELD=COLUMN, e.g. text=review")
        columns[key.strip()] = value.strip()
    r = inspect_file(file, columns, fmt, task, model, max_length, histogram)
    table = _table("property", "value")
    table.add_row("file", f"{r.path} ({r.kind}, sha256 {r.sha256[:12]}…)")
    table.add_row("format", r.explanation)
    table.add_row("task", r.task)
    table.add_row("rows", f"{r.rows:,} read, {r.valid:,} valid, {r.rows - r.valid:,} with problems ({len(r.problems)} problems)")
    table.add_row("duplicates", f"{r.exact_duplicates:,} exact, {r.near_duplicates:,} near (among valid rows)")
    if r.labels is not None:
        table.add_row("labels", ", ".join(f"{k} {v}" for k, v in r.labels.items()))
    if r.majority is not None:
        table.add_row("majority baseline", f"{r.majority[0]!r}: {r.majority[1]:.0%} of valid rows (accuracy of always answering it)")
    if r.lengths:
        s = r.lengths
        table.add_row(f"tokens ({r.tokenizer})", f"min {s['min']}, mean {s['mean']}, p50 {s['p50']}, p95 {s['p95']}, max {s['max']}; "
                      f"{s['over_max']} over max_length {r.max_length}")
        table.add_row("histogram", str(r.histogram))
    console.print(table)
    for where, problem in r.problems[:20]:
        console.print(f"[red]{escape(where)}[/red]: {escape(problem)}", highlight=False)
    if len(r.problems) > 20:
        console.print(f"… and {len(r.problems) - 20} more problems")


@data_app.command("prepare")
def data_prepare(recipe: Annotated[str, typer.Argument(help="Recipe YAML path or shipped recipe name.")], set_: SetOption = None):
    """Validate, clean, deduplicate and split a recipe's data into runs/<id>/data (what `train` does first)."""
    from peftkit.data.inspect import prepare_recipe

    _quiet_libraries()
    run_dir, prepared = prepare_recipe(recipe, set_ or [], console=err)
    m = prepared.manifest
    table = _table("split", "rows", "fixed", "tokens p50 / p95 / max", "over max_length", "sha256")
    for name, split in m["splits"].items():
        st = (m.get("lengths") or {}).get("splits", {}).get(name, {})
        tokens = f"{st['p50']} / {st['p95']} / {st['max']}" if st.get("rows") else "–"
        table.add_row(name, str(split["count"]), "yes" if split["fixed"] else "no", tokens,
                      str(st.get("over_max", "–")), split["sha256"][:12] + "…")
    console.print(table)
    c = m["cleaning"]
    console.print(f"format: {m['format']}")
    console.print(f"removed before splitting: {c['exact_duplicates']} exact and {c['near_duplicates']} near duplicates; from train: "
                  f"{sum(c['leakage'].values())} leaking into val/test ({c['leakage']['val']} val, {c['leakage']['test']} test)")
    if m.get("mix"):
        console.print(f"mixed in: {m['mix']['rows']} rows of {m['mix']['dataset']} ({m['mix']['fraction']:.0%} of train)")
    reasons = ", ".join(f"{k} {v}" for k, v in m["rejects"]["by_reason"].items()) or "none"
    console.print(f"rejects: {m['rejects']['count']} ({reasons}) in {prepared.data_dir / 'rejects.jsonl'}")
    for name, ex in ((m.get("template") or {}).get("examples") or {}).items():
        console.rule(f"template check: {name} example {ex['where']} (loss on ⟦…⟧)")
        console.print(ex["rendered"], markup=False, highlight=False)
    if m.get("lengths"):
        console.print(f"histogram: {prepared.data_dir / m['lengths']['histogram']}")
    console.print(f"data: {prepared.data_dir}")


@app.command()
def models():
    """List the built-in models (they ship in PyPI packages and work offline)."""
    from peftkit.catalog.models import BUILTIN_MODELS

    table = _table("name", "task", "architecture", "params", "licence", "package", "description")
    for m in BUILTIN_MODELS.values():
        table.add_row(m.name, m.task, m.architecture, m.parameters, m.licence, m.package, m.description)
    console.print(table)


@app.command()
def datasets():
    """List the built-in datasets."""
    from peftkit.catalog.datasets import BUILTIN_DATASETS

    table = _table("name", "task", "examples", "licence", "source", "description")
    for d in BUILTIN_DATASETS.values():
        table.add_row(d.name, d.task, d.examples, d.licence, d.source, d.description)
    console.print(table)


@app.command()
def runs(
    runs_dir: Annotated[Path, typer.Option(help="Folder holding run directories.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable rows.")] = False,
):
    """List runs under RUNS_DIR, newest first, with their headline numbers."""
    from peftkit.rundir import list_runs

    rows = [r | {"verdict": _read_json(Path(r["path"]) / "metrics.json").get("verdict")} for r in list_runs(runs_dir)]
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    if not rows:
        err.print(f"no runs under {runs_dir}")
        return
    table = _table("run", "when", "steps", "val loss", "base", "tuned", "verdict", "merged")
    for r in rows:
        metric = _headline_metric(r["tuned"])
        table.add_row(
            r["run"],
            datetime.fromtimestamp(r["modified"]).strftime("%Y-%m-%d %H:%M"),
            str(r["train"].get("steps", "–")),
            _fmt(r["train"].get("val_loss")),
            _fmt(r["base"].get(metric)) if metric else "–",
            f"{_fmt(r['tuned'].get(metric))} {metric}" if metric else "–",
            _verdict_cell(r["verdict"]),
            "yes" if r["merged"] else "no",
        )
    console.print(table)


@app.command()
def plan(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe YAML path or shipped recipe name (or use --model).")] = None,
    set_: SetOption = None,
    model: Annotated[Optional[str], typer.Option(help="Built-in, catalog family, folder or hub id (config only).")] = None,
    method: Annotated[str, typer.Option(help="full, lora, qlora, dora, prompt, prefix; comma-separated to compare.")] = "lora",
    rank: Annotated[int, typer.Option(help="LoRA rank r.")] = 16,
    targets: Annotated[str, typer.Option(help="all-linear, attention, or comma-separated module names.")] = "all-linear",
    batch: Annotated[int, typer.Option(help="Micro-batch size.")] = 1,
    seq: Annotated[int, typer.Option(help="Tokens per sequence.")] = 512,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 (weights and compute).")] = "bfloat16",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing")] = False,
    optimizer: Annotated[str, typer.Option(help="adamw, adamw-8bit, paged-adamw, paged-adamw-8bit.")] = "adamw",
    attention: Annotated[str, typer.Option(help="sdpa, eager or flash_attention_2.")] = "sdpa",
    objective: Annotated[str, typer.Option(help="sft, or dpo (chosen + rejected, a reference model).")] = "sft",
    task: Annotated[Optional[str], typer.Option(help="causal-lm or sequence-classification (default: the model's).")] = None,
    path: Annotated[str, typer.Option(help="peftkit: `peftkit train`'s training path (chunked loss at labelled positions, "
                                           "leaner LoRA layers); stock: a plain transformers/peft loop.")] = "peftkit",
    max_batch_tokens: Annotated[Optional[int], typer.Option(
        help="peftkit path: batches of more tokens run in row slices of this many (a run's metrics: "
             "long_batch_tokens); default: the whole batch at once.")] = None,
    gpu: Annotated[Optional[str], typer.Option(help="GPU names, comma-separated, or 'all' (default).")] = None,
    gpu_memory: Annotated[Optional[str], typer.Option(help="Judge against this much memory instead, e.g. 16GiB.")] = None,
    here: Annotated[bool, typer.Option("--here", help="Judge against this machine's free GPU memory or available RAM.")] = False,
    tokens: Annotated[int, typer.Option(help="Training tokens for the time and price estimate.")] = 10_000_000,
    utilisation: Annotated[float, typer.Option(help="Assumed fraction of peak BF16 throughput (MFU).")] = 0.4,
    tflops: Annotated[Optional[float], typer.Option(help="Peak TFLOP/s of the judged device(s); with --utilisation 1 "
                                                         "a throughput measured here (benchmarks/plan_vs_measured.py).")] = None,
    prices: Annotated[Optional[Path], typer.Option(help="YAML {gpu-name: USD per hour} overriding the defaults.")] = None,
    tasks: Annotated[int, typer.Option(help="Task adapters for the storage comparison.")] = 100,
    serve: Annotated[bool, typer.Option("--serve", help="Plan serving instead: weights, KV cache, adapter slots.")] = False,
    context: Annotated[int, typer.Option(help="--serve: tokens per sequence (prompt + output).")] = 4096,
    concurrent: Annotated[int, typer.Option(help="--serve: sequences in flight.")] = 8,
    adapters: Annotated[int, typer.Option(help="--serve: adapter slots on the device.")] = 4,
    list_models: Annotated[bool, typer.Option("--list-models", help="List the catalog families and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan machine-readably.")] = False,
):
    """Will it fit, what will it cost, which method: a memory plan from the config alone (no weights loaded)."""
    from peftkit.plan.hardware import Device, PlanError, current_device, select_gpus
    from peftkit.plan.memory import ServePlanSpec, TrainPlanSpec
    from peftkit.plan.report import build_report, build_serve_report, print_report, print_serve_report

    _quiet_libraries()
    if list_models:
        from peftkit.plan.architecture import FAMILIES

        table = _table("family", "layers", "hidden", "intermediate", "heads", "kv heads", "vocab", "tied")
        for name, c in FAMILIES.items():
            table.add_row(name, str(c["num_hidden_layers"]), str(c["hidden_size"]), str(c["intermediate_size"]),
                          str(c["num_attention_heads"]), str(c.get("num_key_value_heads", c["num_attention_heads"])),
                          str(c["vocab_size"]), str(c.get("tie_word_embeddings", True)))
        console.print(table)
        return
    if serve:
        if model is None:
            raise PlanError("peftkit plan --serve: give --model NAME")
        spec = ServePlanSpec(model=model, dtype=dtype, quantized=method == "qlora", context=context,
                             concurrent=concurrent, adapters=adapters, rank=rank, targets=targets)
        devices = [Device.from_memory(gpu_memory)] if gpu_memory else [current_device()] if here else select_gpus(gpu, prices)
        serve_report = build_serve_report(spec, devices)
        if as_json:
            console.print_json(json.dumps(serve_report, default=str))
        else:
            print_serve_report(serve_report, console)
        return
    if recipe is not None:
        from peftkit.plan.guard import spec_from_recipe
        from peftkit.recipe import load_recipe

        devices = [current_device()] if not (gpu or gpu_memory) else None
        kind = devices[0].kind if devices else "cuda"
        base = spec_from_recipe(load_recipe(recipe, set_ or []), kind)
        if max_batch_tokens is not None:
            base = TrainPlanSpec(**{**base.model_dump(), "max_batch_tokens": max_batch_tokens})
        specs = [base]
    elif model is not None:
        methods = [m.strip() for m in method.split(",") if m.strip()]
        try:
            specs = [TrainPlanSpec(model=model, method=m, rank=rank, targets=targets, batch=batch, seq=seq, dtype=dtype,
                                   gradient_checkpointing=gradient_checkpointing, optimizer=optimizer, attention=attention,
                                   objective=objective, task=task, path=path, max_batch_tokens=max_batch_tokens,
                                   device="cpu" if here and not _has_cuda() else "cuda")
                     for m in methods]
        except ValueError as exc:  # pydantic: name the flag and what it accepts
            raise PlanError(f"peftkit plan: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
        devices = None
    else:
        raise PlanError("peftkit plan: give a RECIPE or --model NAME (see peftkit plan --help)")
    if gpu_memory:
        devices = [Device.from_memory(gpu_memory)]
    elif here:
        devices = [current_device()]
    elif devices is None or gpu:
        devices = select_gpus(gpu, prices)
    if tflops is not None:
        from dataclasses import replace

        devices = [replace(d, bf16_tflops=tflops) for d in devices]
    report = build_report(specs, devices, tokens=tokens, utilisation=utilisation, tasks=tasks)
    if as_json:
        console.print_json(json.dumps(report, default=str))
    else:
        print_report(report, console)


serve_app = typer.Typer(help="Serve one base model and many adapters behind an OpenAI-compatible API.")
app.add_typer(serve_app, name="serve")


@serve_app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    base: Annotated[Optional[str], typer.Option(help="Base model: built-in name, local folder or hub id.")] = None,
    adapter: Annotated[Optional[list[str]], typer.Option(
        help="NAME=RUN_DIR or NAME=ADAPTER_FOLDER (repeatable); NAME is the `model` clients ask for.")] = None,
    keys: Annotated[Optional[Path], typer.Option(help="Keys file (tenants, hashed keys, allowed adapters); "
                                                      "without it the server listens on 127.0.0.1 only.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    adapter_root: Annotated[Optional[list[str]], typer.Option(
        help="Folder whose subfolders are adapters loaded on first request by name (repeatable); "
             "also where /admin/adapters may load from.")] = None,
    max_adapters: Annotated[int, typer.Option(help="Adapters resident at once (least recently used unloaded).")] = 4,
    max_rank: Annotated[int, typer.Option(help="Refuse adapters of a higher LoRA rank.")] = 64,
    max_adapter_mb: Annotated[int, typer.Option(help="Refuse adapters whose weights exceed this many MiB.")] = 1024,
    allow_base_mismatch: Annotated[bool, typer.Option(help="Serve adapters whose config names another base.")] = False,
    max_batch: Annotated[int, typer.Option(help="Sequences decoded together.")] = 8,
    max_queue: Annotated[int, typer.Option(help="Requests waiting before 429.")] = 64,
    context: Annotated[int, typer.Option(help="Tokens per sequence, prompt + output.")] = 2048,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take before it is stopped (504).")] = 300.0,
    force: Annotated[bool, typer.Option("--force", help="Start even when the memory plan says it will not fit.")] = False,
):
    """Serve the base and the adapters: /v1/models, /v1/chat/completions, /v1/completions, /v1/classify."""
    if ctx.invoked_subcommand is not None:
        return
    from peftkit.serve.server import ServeError, ServeOptions, build_server, run_server

    _quiet_libraries()
    if base is None:
        raise ServeError("peftkit serve: give --base MODEL (see peftkit serve --help)")
    named = {}
    for item in adapter or []:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise ServeError(f"--adapter {item!r}: expected NAME=PATH, e.g. extract=runs/quickstart-20261201-101500")
        if name in named:
            raise ServeError(f"--adapter {name}: given twice")
        named[name] = where
    options = ServeOptions(base=base, adapters=named, keys=str(keys) if keys else None, host=host, port=port,
                           dtype=dtype, adapter_root=adapter_root or [], max_adapters=max_adapters, max_rank=max_rank,
                           max_adapter_bytes=max_adapter_mb << 20, allow_base_mismatch=allow_base_mismatch,
                           max_batch=max_batch, max_queue=max_queue, context=context, timeout=timeout, force=force)
    run_server(build_server(options, console=err), console=err)


@serve_app.command("keygen")
def serve_keygen(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")],
    adapters: Annotated[Optional[str], typer.Option(help="Models the key may use: comma-separated names, or '*'.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="The key may load and unload adapters (/admin).")] = False,
):
    """Print a new API key (shown once) and the entry to add to the keys file."""
    from peftkit.serve.auth import keygen_command

    console.print(keygen_command(tenant, adapters, admin), highlight=False, markup=False)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _table(*headers: str) -> Table:
    """A table whose first column (a name to copy) never truncates; the others wrap."""
    table = Table()
    for i, header in enumerate(headers):
        table.add_column(header, no_wrap=i == 0, overflow="fold")
    return table


def _headline_metric(scores: dict) -> str | None:
    from peftkit.evaluate.headline import headline_metric

    return headline_metric(scores)


def _verdict_cell(verdict: dict | None) -> str:
    """`peftkit runs`: the answer, the flags, and the interval against the best trivial baseline."""
    from peftkit.evaluate.verdict import display_name

    if not verdict:
        return "–"
    cell = verdict["answer"] + "".join(f", {f['name']}" for f in verdict["flags"])
    best = next((c for c in verdict["intervals"] if c.get("deciding") and c["against"] != "base"), None)
    if best:
        low, high = best["ci95"]
        cell += f" ({best['difference']:+.3f} [{low:+.3f}, {high:+.3f}] vs {display_name(best['against'])})"
    return cell


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _base_vs_tuned_table(base: dict, tuned: dict) -> Table:
    table = Table("metric", "base", "tuned", "change")
    for key, value in tuned.items():
        if isinstance(value, (int, float)) and key != "examples":
            b = base.get(key)
            table.add_row(key, _fmt(b), _fmt(value), f"{value - b:+.4f}" if isinstance(b, (int, float)) else "")
    for key, value in tuned.get("per_field", {}).items():
        b = base.get("per_field", {}).get(key)
        table.add_row(f"  {key}", _fmt(b), _fmt(value), f"{value - b:+.4f}" if b is not None else "")
    return table


def main() -> None:
    """The CLI: user mistakes become one red line and exit status 1.

    It never re-executes the process it is called in (a test, a notebook): the jemalloc relaunch
    belongs to process entry points - the `peftkit` console script (peftkit.launch.main) and
    `python -m peftkit.cli` below."""
    try:
        app()
    except PeftkitError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]")
        sys.exit(130)


if __name__ == "__main__":
    from peftkit.launch import main as launch_main

    launch_main()
