"""The `peftkit` command: one thin subcommand per stage; the work is in the library functions.

    peftkit quickstart                 train + eval + merge recipes/quickstart.yaml, one table
    peftkit train RECIPE [--set k=v]   new run directory with an adapter
    peftkit train RECIPE --processes N  the same on N processes (torchrun, DDP), the recipe's global batch kept
    peftkit train [RECIPE] --resume RUN continue RUN from its latest checkpoint (after a crash or SIGTERM)
    peftkit train RECIPE --distributed fsdp|deepspeed --gpus N --nodes M --print-launch   accelerate config + command
    peftkit eval RUN                   base vs tuned on the test split + forgetting gate + report.html
    peftkit eval RUN --data FILE       base vs tuned on another labelled file (RUN/evals/<file stem>/)
    peftkit predict RUN --input FILE --out FILE   batch inference with the tuned model, as eval scored it
    peftkit report RUN [RUN2 ...]      rebuild RUN/report.html, or one page comparing runs
    peftkit inspect attention RUN --text "..."   attention entropy per layer/head, base vs tuned
    peftkit merge RUN [--requantize nf4|int8]   merged safetensors + parity check (+ quantized copy)
    peftkit export RUN --for vllm [--merge]     the adapter as vLLM loads it + the exact `vllm serve` command
    peftkit compare RECIPE --methods lora,ia3,...  train + eval each method on the same data, one table
    peftkit sweep RECIPE --grid method.r=4,8 [--search optuna --trials N] [--parallel K]   a grid, one table, Pareto plots
    peftkit recipe show RECIPE         the resolved recipe, every default filled in
    peftkit data inspect FILE          format, counts, problems, duplicates, token lengths (+ PNG)
    peftkit data prepare RECIPE        validated, cleaned, deduplicated, split data in runs/<id>/data
    peftkit plan [RECIPE] [--model ...] will it fit, what will it cost, which method (nothing loaded)
    peftkit serve --base M --adapter NAME=RUN   one base, many adapters, an OpenAI-compatible API
    peftkit registry add RUN --name N  store a version (provenance, --sign KEY); list | show | diff | promote
    peftkit audit verify | show        the hash-chained audit log and every stored file
    peftkit reproduce NAME@vN          retrain from the recorded recipe and data, compare
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
def train(recipe: Annotated[Optional[str], typer.Argument(
              help="Recipe YAML path or shipped recipe name (with --resume: optional, must equal the run's).")] = None,
          set_: SetOption = None,
          force: Annotated[bool, typer.Option("--force", help="Train even when the plan says it will not fit.")] = False,
          processes: Annotated[int, typer.Option(
              "--processes", min=1, help="Train on N processes of this machine (torchrun, DDP: gloo on CPU, NCCL on "
                                         "CUDA with one GPU each); the global batch stays the recipe's.")] = 1,
          resume: Annotated[Optional[Path], typer.Option(
              "--resume", help="Continue this run directory from its latest checkpoint (train.checkpoint_every, "
                               "SIGTERM).")] = None,
          distributed: Annotated[Optional[str], typer.Option(
              "--distributed", help="fsdp or deepspeed: write an accelerate config for --gpus x --nodes and launch "
                                    "it with `accelerate launch` (see --print-launch).")] = None,
          gpus: Annotated[int, typer.Option("--gpus", min=1, help="--distributed: GPUs per machine.")] = 1,
          nodes: Annotated[int, typer.Option("--nodes", min=1, help="--distributed: machines.")] = 1,
          zero_stage: Annotated[int, typer.Option("--zero-stage", help="--distributed deepspeed: ZeRO stage 2 or 3.")] = 2,
          cpu_offload: Annotated[bool, typer.Option("--cpu-offload", help="--distributed: offload to host memory "
                                                    "what the engine can.")] = False,
          print_launch: Annotated[bool, typer.Option("--print-launch", help="--distributed: write the config and "
                                                     "print the command for every node, start nothing.")] = False):
    """Train an adapter: prepare data, load the base model, add LoRA, train, save RUN/adapter."""
    from peftkit.train.processes import launch_training, world

    if recipe is None and resume is None:
        raise PeftkitError("give a RECIPE to train, or --resume RUN to continue a run")
    if distributed is not None:
        _launch_distributed(recipe, set_ or [], distributed, gpus, nodes, zero_stage, cpu_offload, print_launch)
        return
    here = world()
    if processes > 1 and here.size == 1:  # the launcher: the workers run this command again under torchrun
        status, run_dir = launch_training(recipe, set_ or [], processes, force=force, resume=resume)
        if status:
            sys.exit(status)  # rank 0 has said why
        console.print(f"adapter: {run_dir / 'adapter'}")
        return
    if here.size != processes:
        raise PeftkitError(f"--processes {processes}, but torchrun started {here.size}; use `peftkit train --processes "
                           "N` alone, it starts torchrun itself")
    from peftkit.train.run import train as run_train

    _quiet_libraries()
    try:
        result = run_train(recipe, overrides=set_ or [], console=err, force=force, resume=resume)
    except PeftkitError:
        if here.main:
            raise
        sys.exit(1)  # rank 0 prints the error for every process
    if here.size == 1:  # under torchrun the launcher prints it
        console.print(f"adapter: {result.run_dir / 'adapter'}")


def _launch_distributed(recipe: str | None, sets: list[str], engine: str, gpus: int, nodes: int, zero_stage: int,
                        cpu_offload: bool, print_only: bool) -> None:
    """`train --distributed`: write the accelerate config, print the command, run it unless --print-launch."""
    import subprocess

    from peftkit.distributed import DistributedError, DistributedSpec, plan_launch, write_launch
    from peftkit.recipe import load_recipe

    if recipe is None:
        raise DistributedError("--distributed: give the RECIPE to launch")
    try:
        spec = DistributedSpec(engine=engine, gpus=gpus, nodes=nodes, zero_stage=zero_stage, cpu_offload=cpu_offload)
    except ValueError as exc:  # pydantic: name the flag and what it accepts
        raise DistributedError(f"--distributed: {exc.errors()[0]['loc'][0] if exc.errors()[0]['loc'] else ''}: "
                               f"{exc.errors()[0]['msg']}") from None
    launch = plan_launch(load_recipe(recipe, sets), spec, recipe, sets)
    path = write_launch(launch)
    for note in launch.notes:
        err.print(f"[yellow]note: {escape(note)}[/yellow]")
    err.print(f"accelerate config: {path}" + (" — on every machine, set NODE_RANK (0..) and MAIN_IP (machine 0)"
                                              if nodes > 1 else ""))
    console.print(launch.command, markup=False, highlight=False, soft_wrap=True)
    if not print_only:
        sys.exit(subprocess.call(launch.command, shell=True))


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
def sweep(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML path or shipped recipe name.")],
    grid: Annotated[list[str], typer.Option("--grid", help="KEY=V1,V2,... a recipe field and its values (repeatable), "
                                                          "e.g. --grid method.r=4,8,16 --grid train.lr=5e-4,1e-3.")],
    search: Annotated[str, typer.Option(help="grid: every combination; optuna: --trials of them chosen by TPE.")] = "grid",
    trials: Annotated[Optional[int], typer.Option(help="--search optuna: how many combinations to train.")] = None,
    parallel: Annotated[int, typer.Option(min=1, help="Trials at a time, each in its own process.")] = 1,
    set_: SetOption = None,
):
    """Train and evaluate the recipe at each setting of a grid (or Optuna's picks); one table, sweep.json and
    report.html with Pareto plots (task metric vs trainable parameters and vs s/step, the best run marked) in
    runs/<recipe>-sweep-<timestamp>/. The forgetting gate applies to every trial. Exits 1 when a trial failed."""
    from peftkit.resources import human_bytes
    from peftkit.sweep import sweep as run_sweep

    _quiet_libraries()
    result = run_sweep(recipe, grid, overrides=set_ or [], search=search, trials=trials, parallel=parallel, console=err)
    metric = next((r["metric"] for r in result.rows if r.get("metric")), None) or "task metric"
    keys = list(result.rows[0]["params"]) if result.rows else []
    table = _table("trial", *keys, "status", metric, "base", "trainable", "s/step", "peak memory", "forgetting")
    table.title, table.title_justify = f"peftkit sweep — {result.out_dir}", "left"
    for r in result.rows:
        color = {"ok": "green", "gate failed": "yellow"}.get(r["status"], "red")
        forgetting = {True: "passed", False: "failed"}.get(r.get("forgetting_passed"), "–")
        table.add_row(r["trial"] + (" ★" if r.get("best") else ""), *[escape(r["params"][k]) for k in keys],
                      f"[{color}]{r['status']}[/{color}]", _fmt(r.get("tuned")), _fmt(r.get("base")),
                      f"{r['trainable_params']:,}" if r.get("trainable_params") else "–",
                      f"{r['seconds_per_step']:.2f}" if r.get("seconds_per_step") else "–",
                      human_bytes(r["peak_rss_bytes"]) if r.get("peak_rss_bytes") else "–", forgetting)
    console.print(table)
    best = result.best
    console.print(f"best: {best['trial']} ({', '.join(f'{k}={v}' for k, v in best['params'].items())}) → {best['run_dir']}"
                  if best else "best: none (no trial finished and passed the forgetting gate)")
    console.print(f"sweep.json, pareto.png, report: {result.out_dir}")
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
    gpus: Annotated[int, typer.Option(min=1, help="Data-parallel GPUs (all nodes); memory is planned per GPU.")] = 1,
    strategy: Annotated[str, typer.Option(help="ddp, fsdp, zero2 or zero3: what is sharded over --gpus.")] = "ddp",
    cpu_offload: Annotated[bool, typer.Option("--cpu-offload", help="fsdp/zero3: weights, gradients, optimizer "
                                              "states in host memory; zero2: gradients and optimizer states.")] = False,
    activation_offload: Annotated[bool, typer.Option("--activation-offload", help="Checkpointed layer inputs in "
                                                     "host memory (needs --gradient-checkpointing).")] = False,
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
        if gpus > 1 or strategy != "ddp" or cpu_offload or activation_offload:
            specs = [TrainPlanSpec(**{**base.model_dump(), "gpus": gpus, "strategy": strategy, "cpu_offload": cpu_offload,
                                      "activation_offload": activation_offload,
                                      "gradient_checkpointing": base.gradient_checkpointing or gradient_checkpointing})]
    elif model is not None:
        methods = [m.strip() for m in method.split(",") if m.strip()]
        try:
            specs = [TrainPlanSpec(model=model, method=m, rank=rank, targets=targets, batch=batch, seq=seq, dtype=dtype,
                                   gradient_checkpointing=gradient_checkpointing, optimizer=optimizer, attention=attention,
                                   objective=objective, task=task, path=path, max_batch_tokens=max_batch_tokens,
                                   gpus=gpus, strategy=strategy, cpu_offload=cpu_offload,
                                   activation_offload=activation_offload,
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


registry_app = typer.Typer(help="Registered adapter versions: add, list, show, diff, promote (MLflow Model Registry).",
                            no_args_is_help=True)
app.add_typer(registry_app, name="registry")
audit_app = typer.Typer(help="The registry's hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
keys_app = typer.Typer(help="Signing keys (EC P-256) for registry signatures and audit checkpoints.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
RegistryOption = Annotated[Path, typer.Option("--registry", help="Registry folder (its MLflow store defaults to "
                                                                 "sqlite:///<its parent>/mlflow.db).")]
TrackingOption = Annotated[Optional[str], typer.Option(help="MLflow tracking URI of the registry (any MLflow server).")]
SignOption = Annotated[Optional[Path], typer.Option("--sign", help="Private key (PEM) to sign with; also signs an "
                                                                   "audit checkpoint.", envvar="PEFTKIT_SIGNING_KEY")]
ActorOption = Annotated[Optional[str], typer.Option(help="Who acts, for the audit log (default: the OS user).")]


def _registry(root: Path, tracking_uri: str | None):
    from peftkit.registry.mlflow_registry import Registry

    return Registry(root, tracking_uri)


@registry_app.command("add")
def registry_add(run: RunArg, name: Annotated[str, typer.Option(help="Registered name, e.g. booking-extractor.")],
                 sign: SignOption = None, actor: ActorOption = None,
                 parent: Annotated[Optional[str], typer.Option(help="The version this adapter was tuned from.")] = None,
                 registry: RegistryOption = Path("runs/registry"), tracking_uri: TrackingOption = None):
    """Store RUN's adapter as the next version of NAME, with provenance.json (in-toto/SLSA) and, with --sign,
    a model-signing signature; logs the data's sha256 to the MLflow run; audited."""
    import time

    started = time.perf_counter()
    version = _registry(registry, tracking_uri).add(run, name, key=sign, actor=actor, parent=parent)
    console.print(f"{version.ref}: {version.path} ({time.perf_counter() - started:.1f}s"
                  f"{', signed' if sign else ''})")


@registry_app.command("list")
def registry_list(registry: RegistryOption = Path("runs/registry"), tracking_uri: TrackingOption = None):
    """Every registered version with its aliases, adapter sha256, base and run."""
    table = _table("version", "aliases", "adapter sha256", "base", "run", "signed")
    for r in _registry(registry, tracking_uri).list():
        table.add_row(f"{r['name']}@v{r['version']}", ", ".join(r["aliases"]) or "–", (r["adapter_sha256"] or "")[:16] + "…",
                      r["base"] or "–", r["run"], r["signed"] or "–")
    console.print(table)


@registry_app.command("show")
def registry_show(ref: Annotated[str, typer.Argument(help="NAME@vN or NAME@ALIAS.")],
                  registry: RegistryOption = Path("runs/registry"), tracking_uri: TrackingOption = None):
    """One version: base, data and adapter sha256, gates, metrics, who registered it, its audit history."""
    from peftkit.registry.inspect import describe

    d = describe(_registry(registry, tracking_uri), ref)
    table = _table("field", "value")
    for key in ("ref", "aliases", "path", "run", "trained", "base", "method", "seed", "registered_by", "parent", "signed"):
        table.add_row(key, escape(str(d[key])))
    for group in ("adapter", "data"):
        for rel, digest in d[group].items():
            table.add_row(f"{group}: {rel}", str(digest))
    for gate, result in d["gates"].items():
        table.add_row(f"gate: {gate}", f"{result['passed']} ({escape(result['why'])})")
    for key, value in d["metrics"].items():
        table.add_row(f"metric: {key}", _fmt(value))
    for e in d["history"]:
        table.add_row(f"audit #{e['seq']}", f"{e['time']} {e['actor']} {e['action']} {escape(json.dumps(e['details']))}")
    console.print(table)


@registry_app.command("diff")
def registry_diff(a: Annotated[str, typer.Argument(help="NAME@vN or NAME@ALIAS.")],
                  b: Annotated[str, typer.Argument(help="NAME@vN or NAME@ALIAS.")],
                  registry: RegistryOption = Path("runs/registry"), tracking_uri: TrackingOption = None):
    """What differs between two versions: recipe fields, base, data and adapter sha256, metrics, gates."""
    from peftkit.registry.inspect import diff

    rows = diff(_registry(registry, tracking_uri), a, b)
    table = _table("field", a, b)
    for key, left, right in rows:
        table.add_row(key, escape(_fmt(left)), escape(_fmt(right)))
    console.print(table if rows else f"{a} and {b} have the same recipe, base, data, adapter and metrics")


@registry_app.command("promote")
def registry_promote(ref: Annotated[str, typer.Argument(help="NAME@vN to promote.")],
                     alias: Annotated[str, typer.Option(help="The alias to point at it, e.g. production or staging.")],
                     sign: SignOption = None, actor: ActorOption = None,
                     registry: RegistryOption = Path("runs/registry"), tracking_uri: TrackingOption = None):
    """Point ALIAS at a version, refused (naming the gate) unless its evaluation, forgetting and (when merged)
    parity gates passed; audited, with a signed checkpoint."""
    version = _registry(registry, tracking_uri).promote(ref, alias, key=sign, actor=actor)
    console.print(f"{version.name}@{alias} -> {version.ref}")


@registry_app.command("demote")
def registry_demote(name: Annotated[str, typer.Argument(help="Registered name.")],
                    alias: Annotated[str, typer.Option(help="The alias to remove.")],
                    sign: SignOption = None, actor: ActorOption = None,
                    registry: RegistryOption = Path("runs/registry"), tracking_uri: TrackingOption = None):
    """Remove an alias; audited."""
    _registry(registry, tracking_uri).demote(name, alias, key=sign, actor=actor)
    console.print(f"{name}@{alias} removed")


@keys_app.command("generate")
def keys_generate(out: Annotated[Path, typer.Option(help="Folder for private.pem (0600) and public.pem.")] = Path("keys")):
    """Make an EC P-256 key pair for `registry add --sign` and audit checkpoints (offline, no Sigstore)."""
    from peftkit.registry.signing import generate_keys

    private, public = generate_keys(out)
    console.print(f"private key: {private} (keep it off the registry machine's shared folders)\npublic key: {public}")


@audit_app.command("verify")
def audit_verify(key: Annotated[Optional[Path], typer.Option(help="Trusted public key (default: the registry's "
                                                                  "trusted_key.pem).")] = None,
                 registry: RegistryOption = Path("runs/registry"), tracking_uri: TrackingOption = None):
    """Check the whole audit chain and its signed checkpoints, every stored file of every version, every
    signature, base weights against provenance, and every alias. Exits 1 listing each problem."""
    from peftkit.registry.verify import verify_registry

    report = verify_registry(_registry(registry, tracking_uri), public_key=key)
    console.print(f"{report.entries} audit entries ({report.signed_entries} covered by a signed checkpoint, "
                  f"{report.checkpoints} checkpoints, key {report.trusted_key or 'none'}); "
                  f"{len(report.versions)} versions checked")
    for problem in report.problems:
        err.print(f"[red]tampered:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    if report.problems:
        raise typer.Exit(1)
    console.print("[green]verified: the chain, every stored file, every signature and alias[/green]")


@audit_app.command("show")
def audit_show(object_: Annotated[Optional[str], typer.Option("--object", help="Only entries about NAME@vN.")] = None,
               registry: RegistryOption = Path("runs/registry")):
    """The audit history, oldest first (unverified: `peftkit audit verify` checks it)."""
    from peftkit.registry.audit import AuditLog

    table = _table("#", "time", "actor", "action", "object", "details")
    for e in AuditLog(registry).entries():
        if object_ is None or e.get("object") == object_:
            table.add_row(str(e.get("seq")), e.get("time", ""), e.get("actor", ""), e.get("action", ""),
                          e.get("object", ""), escape(json.dumps(e.get("details", {}))))
    console.print(table)


@app.command()
def reproduce(ref: Annotated[str, typer.Argument(help="NAME@vN or NAME@ALIAS.")],
              evaluate_: Annotated[bool, typer.Option("--eval", help="Also evaluate and compare the test metrics.")] = False,
              runs_dir: Annotated[Path, typer.Option(help="Where the new run directory goes.")] = Path("runs"),
              actor: ActorOption = None, registry: RegistryOption = Path("runs/registry"),
              tracking_uri: TrackingOption = None):
    """Retrain a version from its recorded recipe and data (refused if an input changed) and compare the
    adapter's sha256 and the metrics with the recorded ones."""
    from peftkit.registry.reproduce import reproduce as run_reproduce

    _quiet_libraries()
    result = run_reproduce(_registry(registry, tracking_uri), ref, runs_dir=runs_dir, evaluate=evaluate_, actor=actor,
                           console=err)
    table = _table("what", "recorded", "reproduced", "same")
    for r in result.rows:
        table.add_row(r["what"], _fmt(r["recorded"]), _fmt(r["reproduced"]), "[green]yes[/green]" if r["same"] else "[red]no[/red]")
    console.print(table)
    console.print(f"run: {result.run_dir} ({result.seconds:.0f}s); adapter bit for bit: "
                  f"{'yes' if result.equal_adapter else 'no'}; metrics within tolerance: "
                  f"{'yes' if result.metrics_within_tolerance else 'no'}")


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
    max_step_tokens: Annotated[int, typer.Option(help="Tokens per engine step: decoding sequences + prompt chunks.")] = 512,
    lora_step: Annotated[str, typer.Option(help="batched (adapters stacked per layer) or peft (peft's adapter_names).")] = "batched",
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
                           max_batch=max_batch, max_queue=max_queue, context=context, timeout=timeout, force=force,
                           max_step_tokens=max_step_tokens, lora_step=lora_step)
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
