"""`peftkit predict RUN --input FILE --out FILE`: batch inference with a run's tuned model.

    result = predict("runs/quickstart-20261123-101500", "new_emails.jsonl", "predictions.jsonl")
    result.rows, result.seconds, result.out_path

What was tested is what is served: the tuned model is loaded as `peftkit eval` loads it
(`evaluate.run.load_tuned_model`), prompts are built with the same `to_prompt_completion` (the run's
instruction as system prompt, the model's chat template) and answered with the same greedy
`generate_answers` (eval.max_new_tokens, eval.batch_size), so a prediction equals the tuned answer
eval recorded for the same input in the same batch. A different --batch-size pads batches
differently, which can change a near-tie of a greedy step.

Input rows need only the task's input field (after data.columns of the run's recipe):

| task           | field      | notes                                                      |
| extraction     | `input`    | the email / text to extract from                           |
| chat           | `messages` | ending with a user turn; a final assistant turn is dropped |
| completion     | `prompt`   | non-empty, continued as plain text                         |
| classification | `text`     | every label gets a probability (softmax of the logits)     |

Other fields are kept. Rows are validated as `data prepare` validates them (text fields, roles,
special tokens of the model's tokenizer); a row with a problem stops the run before the model is
loaded, with every problem listed by file, line and field; no row is dropped. The output is JSON Lines, one line per
input row in input order: the row as given plus `prediction` (classification: also
`probabilities`, {label: p}), written atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from peftkit.data.formats import apply_columns
from peftkit.data.prepare import _column_names, load_prepared, normalise_record
from peftkit.data.readers import read_file
from peftkit.data.records import record_problems, to_prompt_completion
from peftkit.data.template import special_token_problems
from peftkit.errors import DataError, PeftkitError, RecipeError
from peftkit.evaluate.run import load_tuned_model, problems_error, tuned_description
from peftkit.rundir import open_run, require

INPUT_FIELDS = {"extraction": "input", "chat": "messages", "completion": "prompt", "classification": "text"}
# what validation sees in place of the answer an input row does not have (never shown to the model)
ANSWER_STAND_INS = {"extraction": {"output": "…"}, "classification": {"label": "…"},
                    "completion": {"completion": "…"}, "chat": {"role": "assistant", "content": "…"}}


@dataclass
class Input:
    where: str  # "file.jsonl:12"
    given: dict  # the row as the file holds it: written back with its prediction
    prompt: list[dict] | str  # chat messages, plain text to continue, or (classification) the text to label


@dataclass
class PredictResult:
    out_path: Path
    rows: int
    task: str
    tuned_model: str  # what answered, as eval names it
    seconds: float  # loading and predicting

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def predict(run_dir: str | Path, input_path: str | Path, out_path: str | Path, console: Console | None = None,
            batch_size: int | None = None, limit: int | None = None) -> PredictResult:
    """Answer every row of `input_path` with the run's tuned model; write rows + predictions to `out_path`.

    Args:
        batch_size: rows per batch (default eval.batch_size: the batches eval used, so answers match eval's).
        limit: predict only the first `limit` rows of the file.
    """
    from peftkit.evaluate.generate import classify_probabilities, generate_answers
    from peftkit.loading import load_tokenizer
    from peftkit.methods import artifact_name

    console = console or Console(stderr=True)
    run_dir, recipe = open_run(run_dir)
    require(run_dir, artifact_name(recipe.method), "train")
    prepared = load_prepared(run_dir / "data")
    input_path, out_path = Path(input_path), Path(out_path)
    if out_path.resolve() == input_path.resolve():
        raise DataError(f"--out {out_path}: is the input file; write the predictions to another file")
    for name, value in (("--batch-size", batch_size), ("--limit", limit)):
        if value is not None and value < 1:
            raise PeftkitError(f"{name}: expected a positive number of rows, got {value}")
    started = time.perf_counter()
    tokenizer = load_tokenizer(recipe.model)
    inputs = read_inputs(input_path, prepared.task, prepared.instruction, recipe.data.columns, tokenizer)[:limit]
    batch_size = batch_size or recipe.eval.batch_size
    model = load_tuned_model(recipe, prepared, run_dir)
    prompts = [i.prompt for i in inputs]
    with _progress(console) as progress:
        if prepared.task == "classification":
            scored = classify_probabilities(model, tokenizer, prompts, prepared.labels, batch_size,
                                            recipe.data.max_length, progress, "tuned")
            extra = [{"prediction": label, "probabilities": probs} for label, probs in scored]
        else:
            answers = generate_answers(model, tokenizer, prompts, batch_size, recipe.eval.max_new_tokens, progress,
                                       "tuned")
            extra = [{"prediction": a} for a in answers]
    _write_jsonl(out_path, [{**i.given, **e} for i, e in zip(inputs, extra)])
    return PredictResult(out_path, len(inputs), prepared.task, tuned_description(recipe.method),
                         time.perf_counter() - started)


def read_inputs(path: Path, task: str, instruction: str | None, columns: dict[str, str] | None = None,
                tokenizer=None) -> list[Input]:
    """Every row of `path` as an Input of `task`, read and normalised as `data prepare` reads a file.

    Only the task's input field is mapped through `columns` (a labelled column may be absent). With a
    tokenizer, text holding one of its special tokens is a problem, as in `data prepare`. Any problem
    raises one DataError listing all of them with file, line and field.
    """
    if task not in INPUT_FIELDS:
        raise RecipeError(f"data.task: {task} runs cannot predict (tasks: {', '.join(INPUT_FIELDS)})")
    field = INPUT_FIELDS[task]
    mapping = {f: c for f, c in (columns or {}).items() if f == field}
    raw_rows, _ = read_file(path)
    problems: list[tuple[str, str]] = []
    inputs: list[Input] = []
    for raw, row in zip(raw_rows, apply_columns(raw_rows, mapping, str(path))):
        if row.problem:
            problems.append((row.where, row.problem))
            continue
        record = normalise_record(row.record) if isinstance(row.record, dict) else row.record
        found = input_problems(record, task)
        if not found and tokenizer is not None:
            found = special_token_problems(_input_only(record, task), tokenizer)
        if found:
            problems += [(row.where, _column_names(p, mapping)) for p in found]
        else:
            inputs.append(Input(row.where, raw.record, _prompt(record, task, instruction)))
    if problems:
        raise problems_error(path, problems)
    if not inputs:
        raise DataError(f"{path}: no rows to predict")
    return inputs


def input_problems(record, task: str) -> list[str]:
    """Every problem of one input row as 'field: expected …, found …' strings (empty when valid).

    The row is checked by the task's record rules (`record_problems`) with the answer still to come:
    a stand-in takes the place of the output, label or completion, which an input row need not have.
    """
    if not isinstance(record, dict):
        return record_problems(record, task)  # 'record: expected a JSON object, found …'
    if task == "chat":
        return _chat_problems(record)
    problems = record_problems({**record, **ANSWER_STAND_INS[task]}, task)
    if task == "completion" and not problems and not record["prompt"].strip():
        problems.append("prompt: empty text (nothing to continue)")
    return problems


def _chat_problems(record: dict) -> list[str]:
    """A chat to answer: the turns (a final assistant turn dropped) must end with a user turn; each turn
    is checked by the chat record rules (roles, contents, system first)."""
    turns = _turns(record.get("messages"))
    if not turns:
        return ["messages: expected a non-empty list of {role, content} ending with a user turn"]
    problems = record_problems({"messages": [*turns, ANSWER_STAND_INS["chat"]]}, "chat")
    last = turns[-1]
    if not problems and last.get("role") != "user":
        problems.append(f"messages[{len(turns) - 1}].role: a chat to answer must end with a user turn, "
                        f"found {last.get('role')!r}")
    return problems


def _input_only(record: dict, task: str) -> dict:
    """The part of a valid row the model sees: its input field (a chat without a final assistant turn)."""
    if task == "chat":
        return {"messages": _turns(record["messages"])}
    return {INPUT_FIELDS[task]: record[INPUT_FIELDS[task]]}


def _turns(messages) -> list:
    """The turns a prompt is made of: `messages` without a final assistant turn (a reference answer)."""
    if not isinstance(messages, list):
        return []
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        return messages[:-1]
    return messages


def _prompt(record: dict, task: str, instruction: str | None) -> list[dict] | str:
    """The prompt eval builds for this row: `to_prompt_completion` of the record with an empty answer."""
    if task == "classification":
        return record["text"]
    if task == "chat":
        turns = [{"role": m["role"], "content": m["content"]} for m in _turns(record["messages"])]
        canonical = {"messages": [*turns, {"role": "assistant", "content": ""}]}
    elif task == "extraction":
        canonical = {"input": record["input"], "output": ""}
    else:
        canonical = {"prompt": record["prompt"], "completion": ""}
    return to_prompt_completion(canonical, task, instruction)["prompt"]


class _RateColumn(ProgressColumn):
    """Rows per second, once rich has measured a rate."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} rows/s" if task.speed else "")


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]predict {task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                    TimeRemainingColumn(), console=console)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """All rows or none: written next to `path`, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(_json_line(r) for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def _json_line(row: dict) -> str:
    text = json.dumps(row, ensure_ascii=False, default=str)  # default: e.g. a Parquet timestamp, as text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a field kept as given holds a lone surrogate: write it as the \u escape it was
        text = json.dumps(row, default=str)
    return text + "\n"
