"""`peftkit eval RUN`: score the base model and the tuned model on the run's test split, run the
forgetting check, write metrics.json and report.html, and fail when the forgetting gate fails.

    results = evaluate("runs/quickstart-20261123-101500")
    results["base"]["field_accuracy"], results["tuned"]["field_accuracy"], results["forgetting"]["passed"]

Task metrics (eval.metrics; default by task): extraction → JSON validity, per-field accuracy, exact
match; classification → accuracy, macro-F1, per class, confusion matrix; generation → ROUGE-L and
exact match of greedy answers; perplexity → loss, perplexity and token accuracy on the answers. Base
and tuned go through the same functions with the same prompts and greedy decoding. The general
suite (eval.general, see `forgetting.py`) is scored on both for causal LMs. Results go into
metrics.json as {"base", "tuned", "forgetting", "eval"}; every test example's base and tuned answers
go to `eval_predictions.jsonl`. When a threshold of eval.max_forgetting is exceeded, everything is
still written and then ForgettingGateError names the threshold (`peftkit eval` exits 1).
`verdict.py` adds "baselines" (trivial answers scored the same way) and "verdict" (yes / no / not
distinguishable, with paired 95% intervals and degenerate-model flags); a gate of eval.fail_on
raises VerdictGateError, also after everything is written.

`evaluate(run, data="labelled.jsonl")` (`peftkit eval RUN --data FILE`) scores base and tuned on another
labelled file instead, read and validated as the run's data was (`read_labelled`); its results go to
RUN/evals/<file stem>/{metrics.json, eval_predictions.jsonl} and RUN/metrics.json is left as it is.

The tuned model per method (`peftkit.methods.load_tuned`): the base with RUN/adapter attached for
every PEFT kind (prefix/prompt tuning through peft's forward and generate, which add the virtual
tokens); for qlora the base is loaded 4-bit as in training and scored so as base too, so base and
tuned differ only by the adapter; for full fine-tuning the whole model in RUN/model.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from peftkit.data.prepare import load_prepared, read_split
from peftkit.data.records import to_prompt_completion
from peftkit.errors import DataError, RecipeError
from peftkit.evaluate.metrics import classification_scores, extraction_scores, generation_scores
from peftkit.recipe import EarlyStoppingSpec, load_recipe
from peftkit.registry.verify import check_trained_files
from peftkit.resources import peak_memory
from peftkit.rundir import open_run, require, update_metrics

DEFAULT_METRICS = {"extraction": ["extraction"], "chat": ["perplexity", "generation"],
                   "completion": ["perplexity", "generation"], "classification": ["classification"]}
ALLOWED_METRICS = {"extraction": {"extraction", "generation", "perplexity"}, "chat": {"generation", "perplexity"},
                   "completion": {"generation", "perplexity"}, "classification": {"classification"}}


def evaluate(run_dir: str | Path, console: Console | None = None, overrides: list[str] | None = None,
             gate: bool = True, report: bool = True, data: str | Path | None = None) -> dict:
    """Score base and tuned on the test split and the general suite; returns {"base", "tuned",
    "forgetting", "eval"} (also in metrics.json) and writes report.html.

    Args:
        overrides: `--set` strings applied to the run's recipe for this evaluation (eval.* fields).
        gate: raise ForgettingGateError when a threshold of eval.max_forgetting is exceeded.
        report: (re)build RUN/report.html.
        data: score on this labelled file instead of the test split (`read_labelled`): results go to
            RUN/evals/<file stem>/ and RUN/metrics.json is left as it is; the general suite is skipped
            (it does not depend on the file; its scores stay in RUN/metrics.json), as are MLflow and the report.
    """
    from peftkit.evaluate import forgetting
    from peftkit.loading import load_tokenizer
    from peftkit.methods import artifact_name, load_tuned

    console = console or Console(stderr=True)
    run_dir, recipe = open_run(run_dir)
    if overrides:
        recipe = load_recipe(run_dir / "recipe.yaml", overrides)
    method = recipe.method
    require(run_dir, artifact_name(method), "train")
    prepared = load_prepared(run_dir / "data")
    if data is None:
        check_trained_files(run_dir, ("test",))  # refuse a test split or adapter changed since training
        rows = read_split(prepared.data_dir, "test")[: recipe.eval.max_examples]
    else:
        rows, data_source = read_labelled(Path(data), recipe, prepared)
        rows = rows[: recipe.eval.max_examples]
        recipe = _without_general_suite(recipe)
    if not rows:
        raise DataError(f"{run_dir}: the test split is empty; raise data.split.test in the recipe")
    families = task_metrics(recipe.eval.metrics, prepared.task)
    suite = _general_sets(recipe, prepared)
    started = time.perf_counter()
    tokenizer = load_tokenizer(recipe.model)
    model = load_base(recipe, prepared)
    load_full = full_loader(recipe, prepared)
    tuned = None
    base_view = contextlib.nullcontext()
    if method.kind == "qlora":
        # transformers' Trainer (the chat loss uses it) refuses a bare 4-bit model even to evaluate, so the
        # base is scored as the 4-bit model with its adapter attached and disabled: the same function.
        tuned = load_tuned(model, method, run_dir)
        model, base_view = tuned, tuned.disable_adapter()
    with _progress(console) as progress:
        with base_view:
            base_out = _score(model, tokenizer, rows, prepared, recipe, families, progress, "base ")
            base_general = forgetting.score_suite(model, tokenizer, suite, recipe.eval.general, recipe.eval.batch_size,
                                                  recipe, progress, "base ")
        if method.kind == "full":
            del model  # the tuned model is a second full copy: drop the base first
        # base + RUN/adapter (peft adds it to `model` in place), or RUN/model for full fine-tuning
        tuned = tuned or load_tuned(None if method.kind == "full" else model, method, run_dir, load_full=load_full)
        tuned_out = _score(tuned, tokenizer, rows, prepared, recipe, families, progress, "tuned")
        tuned_general = forgetting.score_suite(tuned, tokenizer, suite, recipe.eval.general, recipe.eval.batch_size,
                                               recipe, progress, "tuned")

    deltas = forgetting.forgetting_deltas(base_general, tuned_general)
    kinds = {s.name: s.kind for s in suite} | {k: "lm_eval" for k in base_general if k.startswith("lm_eval:")}
    checks = forgetting.check_gate(deltas, kinds, recipe.eval.max_forgetting)
    section = forgetting.gate_section(suite, deltas, checks, recipe.eval.max_forgetting)
    section["sets"].update({k: {"kind": "lm_eval", "metric": v["metric"]} for k, v in base_general.items()
                            if k.startswith("lm_eval:")})
    if not suite and prepared.task == "classification":
        section["skipped"] = "encoder classifier: no language-model head to score general text with"
    results = {
        "base": base_out["scores"],
        "tuned": tuned_out["scores"],
        "forgetting": section,
        "eval": {"split": "test", "examples": len(rows), "metrics": families, "overrides": list(overrides or []),
                 "method": method.kind, "tuned_model": tuned_description(method),
                 "seconds": time.perf_counter() - started, **peak_memory()},
    }
    # trivial baselines, paired intervals, degenerate-model flags, forgetting warnings (verdict.py)
    from peftkit.evaluate.verdict import assess, raise_if_gated

    results.update(assess(rows, read_split(prepared.data_dir, "train"), prepared, recipe, base_out, tuned_out,
                          section, tokenizer))
    out_dir = run_dir
    if data is not None:  # another file's scores: their own folder, the run's test results stay as they are
        out_dir = run_dir / "evals" / _file_stem(Path(data))
        out_dir.mkdir(parents=True, exist_ok=True)
        results["eval"].update(split="file", data=data_source)
        results["forgetting"]["skipped"] = "--data evaluation: the general suite does not depend on the file"
    update_metrics(out_dir, **results)
    if data is not None:
        results["metrics_path"] = str(out_dir / "metrics.json")
    if "answers" in base_out:
        with (out_dir / "eval_predictions.jsonl").open("w", encoding="utf-8") as fh:
            for row, b, t in zip(rows, base_out["answers"], tuned_out["answers"]):
                fh.write(json.dumps({**row, "base": b, "tuned": t}, ensure_ascii=False) + "\n")
    if recipe.output.mlflow and data is None:
        from peftkit.tracking import log_evaluation

        log_evaluation(recipe, run_dir, results)
    if report and data is None:
        from peftkit.evaluate.report import build_report

        results["report"] = str(build_report([run_dir]).path)
    if gate:
        forgetting.raise_if_failed(checks, results)
        raise_if_gated(results["verdict"], recipe.eval.fail_on, results)
    return results


def tuned_description(method) -> str:
    """What eval scored as "tuned" (and, for qlora, as "base")."""
    if method.kind == "full":
        return "RUN/model (fully fine-tuned)"
    if method.kind == "qlora":
        return f"4-bit {method.quant_type} base + RUN/adapter (base scored 4-bit too, as trained)"
    return "base + RUN/adapter"


def task_metrics(chosen: list[str] | None, task: str) -> list[str]:
    """The metric families to compute: the recipe's choice (checked against the task) or the task's default."""
    if task not in DEFAULT_METRICS:
        raise RecipeError(f"data.task: {task} runs cannot be evaluated base vs tuned (tasks: {', '.join(DEFAULT_METRICS)})")
    if chosen is None:
        return DEFAULT_METRICS[task]
    wrong = [m for m in chosen if m not in ALLOWED_METRICS[task]]
    if wrong or not chosen:
        raise RecipeError(f"eval.metrics: {wrong or '[]'} cannot score a {task} task; "
                          f"expected some of {sorted(ALLOWED_METRICS[task])}")
    return list(dict.fromkeys(chosen))


def load_base(recipe, prepared):
    """The base model as training saw it: 4-bit for qlora, so base and tuned differ only by the adapter."""
    from peftkit.loading import load_base_model
    from peftkit.methods import base_quantization, trained_precision

    task = "sequence-classification" if prepared.task == "classification" else "causal-lm"
    return load_base_model(recipe.model, prepared.task, prepared.labels, recipe.train.seed,
                           quantization=base_quantization(recipe.method, task, trained_precision(recipe)))


def full_loader(recipe, prepared):
    """`load_tuned`'s load_full for full fine-tuning: RUN/model loaded the way the base is."""
    from peftkit.loading import load_base_model

    def load_full(folder: Path):
        return load_base_model(recipe.model.model_copy(update={"name": str(folder)}), prepared.task, prepared.labels,
                               recipe.train.seed)

    return load_full


def load_tuned_model(recipe, prepared, run_dir: Path):
    """The model eval scores as "tuned", loaded on its own (the base is not kept apart): what predict uses."""
    from peftkit.methods import load_tuned

    base = None if recipe.method.kind == "full" else load_base(recipe, prepared)
    return load_tuned(base, recipe.method, run_dir, load_full=full_loader(recipe, prepared))


def read_labelled(path: Path, recipe, prepared) -> tuple[list[dict], dict]:
    """Canonical records of a labelled file for `evaluate(data=…)`, read, mapped (data.columns), validated and
    normalised as the run's own data was (`read_records`), plus the file's info (path, kind, sha256, rows).

    Every problem stops it, all listed with file and line: rows are never dropped from a score. Text
    holding a special token of the model's tokenizer is a problem (as in `data prepare`), and for
    classification so is a label the run was not trained on.
    """
    from peftkit.data.prepare import read_records
    from peftkit.data.template import special_token_problems
    from peftkit.loading import load_tokenizer

    spec = recipe.data.model_copy(update={"task": prepared.task})
    problems: list = []
    rows, info, *_ = read_records(path, spec, problems)
    found = [(where, p) for where, p, _ in problems]
    tokenizer = load_tokenizer(recipe.model)
    found += [(r.where, p) for r in rows for p in special_token_problems(r.record, tokenizer)]
    if prepared.task == "classification":
        found += [(r.where, f"label: {r.record['label']!r} is not a label of this run "
                            f"(labels: {', '.join(prepared.labels)})") for r in rows
                  if r.record["label"] not in prepared.labels]
    if found:
        raise problems_error(path, found)
    if not rows:
        raise DataError(f"{path}: no records to score")
    return [r.record for r in rows], info


def problems_error(path: Path, problems: list[tuple[str, str]]) -> DataError:
    """One DataError listing the (where, problem) pairs of a file, the first MAX_LISTED_PROBLEMS in full."""
    from peftkit.data.prepare import MAX_LISTED_PROBLEMS

    listed = [f"{where}: {p}" for where, p in problems[:MAX_LISTED_PROBLEMS]]
    more = len(problems) - len(listed)
    tail = f"\n… and {more} more problems" if more else ""
    rows = len({where for where, _ in problems})
    return DataError(f"{len(problems)} problems in {path} ({rows} rows):\n" + "\n".join(listed) + tail)


def _without_general_suite(recipe):
    """The recipe with the general suite, lm-eval tasks and forgetting thresholds off (a `--data` evaluation)."""
    from peftkit.recipe import MaxForgettingSpec

    general = recipe.eval.general.model_copy(update={"enabled": False, "lm_eval_tasks": []})
    spec = recipe.eval.model_copy(update={"general": general, "max_forgetting": MaxForgettingSpec()})
    return recipe.model_copy(update={"eval": spec})


def _file_stem(path: Path) -> str:
    """'labelled.jsonl.gz' -> 'labelled': the folder name of a `--data` evaluation."""
    return Path(path.name.removesuffix(".gz")).stem or path.name


def _general_sets(recipe, prepared) -> list:
    """The general suite of a run (empty when disabled); classification encoders have no LM head to score it."""
    from peftkit.evaluate.forgetting import general_suite, require_sets_for_thresholds, thresholds_set

    spec = recipe.eval.general
    if prepared.task == "classification":
        wanted = thresholds_set(recipe.eval.max_forgetting)
        if wanted:
            raise RecipeError(f"eval.max_forgetting.{wanted[0]}: the forgetting check needs a causal LM; "
                              f"'{recipe.model.name}' is trained as an encoder classifier (set it to null)")
        return []
    if not spec.enabled:
        if thresholds_set(recipe.eval.max_forgetting):
            raise RecipeError("eval.general.enabled is false but eval.max_forgetting sets thresholds; "
                              "enable the suite or clear the thresholds")
        return []
    run_rows = [r for split in ("train", "val", "test") for r in read_split(prepared.data_dir, split)]
    sets = general_suite(spec, run_rows)
    require_sets_for_thresholds(sets, spec, recipe.eval.max_forgetting)
    return sets


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]eval {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console)


def _score(model, tokenizer, rows, prepared, recipe, families, progress, label) -> dict:
    """{"scores": flat metric dict, "answers": per-example outputs (when the task generates or classifies)}."""
    from peftkit.evaluate.generate import classify, generate_answers

    if prepared.task == "classification":
        predicted = classify(model, tokenizer, [r["text"] for r in rows], prepared.labels,
                             recipe.eval.batch_size, recipe.data.max_length, progress, label)
        return {"scores": classification_scores(predicted, [r["label"] for r in rows], prepared.labels),
                "answers": predicted}
    pairs = [to_prompt_completion(r, prepared.task, prepared.instruction) for r in rows]
    scores: dict = {}
    out: dict = {"scores": scores}
    if "extraction" in families or "generation" in families:
        answers = generate_answers(model, tokenizer, [p["prompt"] for p in pairs], recipe.eval.batch_size,
                                   recipe.eval.max_new_tokens, progress, label)
        references = [p["completion"] if isinstance(p["completion"], str) else p["completion"][0]["content"] for p in pairs]
        out["answers"] = answers
        out["references"] = references
        if "extraction" in families:
            scores.update(extraction_scores(answers, references))
        if "generation" in families:
            scores.update(generation_scores(answers, references))
    if "perplexity" in families:
        loss = assistant_loss(model, tokenizer, pairs, recipe, progress, label, recipe.data.max_length)
        scores.update({**loss, "perplexity": math.exp(min(loss["loss"], 50.0))})
    scores["examples"] = len(rows)
    return out


def assistant_loss(model, tokenizer, pairs: list[dict], recipe, progress, label: str, max_length: int) -> dict:
    """Mean token cross-entropy and next-token accuracy on the completions of prompt/completion pairs
    (the assistant's answers), with trl's own masking and collation: {"loss", "token_accuracy"}."""
    import datasets
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from peftkit.train.common import trainer_kwargs

    dataset = datasets.Dataset.from_list(pairs)
    task = progress.add_task(label, total=len(pairs))
    # nothing is trained: the schedule fields only have to be concrete (the recipe may leave them auto)
    scoring = recipe.train.model_copy(update={"early_stopping": EarlyStoppingSpec(patience=None), "lr": 1.0, "epochs": 1.0})
    kwargs = trainer_kwargs(scoring, Path(recipe.output.runs_dir) / ".eval", has_val=False)
    kwargs["per_device_eval_batch_size"] = recipe.eval.batch_size
    args = SFTConfig(**kwargs, max_length=max_length, completion_only_loss=True)
    tokenizer.padding_side = "right"
    # trl requires a train_dataset even for evaluate(); nothing is trained here.
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # it prints the raw metrics dict; the progress bar shows progress
    metrics = trainer.evaluate()
    progress.advance(task, len(pairs))
    return {"loss": float(metrics["eval_loss"]), "token_accuracy": float(metrics["eval_mean_token_accuracy"])}
