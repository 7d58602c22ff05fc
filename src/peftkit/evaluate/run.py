"""`peftkit eval RUN`: score the base model and the tuned model on the run's test split.

    results = evaluate("runs/quickstart-20261123-101500")
    results["base"]["field_accuracy"], results["tuned"]["field_accuracy"]

Metrics by task: extraction → JSON validity, per-field accuracy, exact match; classification →
accuracy, macro-F1, per class; chat → loss and perplexity on the assistant turns. Results go into
metrics.json as {"base": {...}, "tuned": {...}, "eval": {...}}; every test example's base and tuned
answers go to `eval_predictions.jsonl` for reading side by side.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from peftkit.data.prepare import load_prepared, read_split
from peftkit.data.records import to_prompt_completion
from peftkit.errors import DataError
from peftkit.evaluate.metrics import classification_scores, extraction_scores
from peftkit.resources import peak_memory
from peftkit.rundir import open_run, require, update_metrics


def evaluate(run_dir: str | Path, console: Console | None = None) -> dict:
    """Score base and tuned on the test split; returns {"base", "tuned", "eval"} (also in metrics.json)."""
    from peft import PeftModel

    from peftkit.loading import load_base_model, load_tokenizer

    console = console or Console(stderr=True)
    run_dir, recipe = open_run(run_dir)
    adapter_dir = require(run_dir, "adapter", "train")
    prepared = load_prepared(run_dir / "data")
    rows = read_split(prepared.data_dir, "test")[: recipe.eval.max_examples]
    if not rows:
        raise DataError(f"{run_dir}: the test split is empty; raise data.split.test in the recipe")
    started = time.perf_counter()
    tokenizer = load_tokenizer(recipe.model)
    model = load_base_model(recipe.model, prepared.task, prepared.labels, recipe.train.seed)

    with _progress(console) as progress:
        base_out = _score(model, tokenizer, rows, prepared, recipe, progress, "base ")
        tuned = PeftModel.from_pretrained(model, adapter_dir)  # adds the adapter to `model` in place
        tuned_out = _score(tuned, tokenizer, rows, prepared, recipe, progress, "tuned")

    results = {
        "base": base_out["scores"],
        "tuned": tuned_out["scores"],
        "eval": {"split": "test", "examples": len(rows), "seconds": time.perf_counter() - started, **peak_memory()},
    }
    update_metrics(run_dir, **results)
    if "answers" in base_out:
        with (run_dir / "eval_predictions.jsonl").open("w", encoding="utf-8") as fh:
            for row, b, t in zip(rows, base_out["answers"], tuned_out["answers"]):
                fh.write(json.dumps({**row, "base": b, "tuned": t}, ensure_ascii=False) + "\n")
    if recipe.output.mlflow:
        from peftkit.tracking import log_evaluation

        log_evaluation(recipe, run_dir, results)
    return results


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]eval {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console)


def _score(model, tokenizer, rows, prepared, recipe, progress, label) -> dict:
    from peftkit.evaluate.generate import classify, generate_answers

    if prepared.task == "classification":
        predicted = classify(model, tokenizer, [r["text"] for r in rows], prepared.labels,
                             recipe.eval.batch_size, recipe.data.max_length, progress, label)
        return {"scores": classification_scores(predicted, [r["label"] for r in rows], prepared.labels),
                "answers": predicted}
    if prepared.task == "extraction":
        prompts = [to_prompt_completion(r, "extraction", prepared.instruction)["prompt"] for r in rows]
        answers = generate_answers(model, tokenizer, prompts, recipe.eval.batch_size,
                                   recipe.eval.max_new_tokens, progress, label)
        return {"scores": extraction_scores(answers, [r["output"] for r in rows]), "answers": answers}
    loss = assistant_loss(model, tokenizer, rows, recipe, progress, label)
    return {"scores": {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "examples": len(rows)}}


def assistant_loss(model, tokenizer, rows, recipe, progress, label) -> float:
    """Mean token cross-entropy on the final assistant turns, with trl's own masking and collation."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from peftkit.train.common import trainer_kwargs

    dataset = datasets.Dataset.from_list([to_prompt_completion(r, "chat", None) for r in rows])
    task = progress.add_task(label, total=len(rows))
    kwargs = trainer_kwargs(recipe.train, Path(recipe.output.runs_dir) / ".eval", has_val=False)
    kwargs["per_device_eval_batch_size"] = recipe.eval.batch_size
    args = SFTConfig(**kwargs, max_length=recipe.data.max_length, completion_only_loss=True)
    tokenizer.padding_side = "right"
    # trl requires a train_dataset even for evaluate(); nothing is trained here.
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer)
    loss = trainer.evaluate()["eval_loss"]
    progress.advance(task, len(rows))
    return float(loss)
