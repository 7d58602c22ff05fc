"""`peftkit quickstart`: recipes/quickstart.yaml end to end — train, eval, merge — and one table.

The table answers "did it work, what did it cost": base vs tuned field accuracy, JSON validity and
exact match on the generated test emails, the verdict of `peftkit eval` (answer and its first reason),
the tuned model's field accuracy on the hand-written booking emails shipped with the package
(`shipping_emails.HANDWRITTEN_BOOKINGS`: mail the generator did not write); trainable parameters and
their share; adapter vs model size on disk; wall time; peak memory; seconds per step.

The hand-written set is scored for the tuned model only, through `peftkit predict` (the tuned model,
prompts and greedy decoding eval uses): the base model would cost at least as much again (it never
stops before eval.max_new_tokens; the tuned model took 67-91 s on 2 CPU cores) for a number the
generated set already gives (the base model writes no valid booking JSON there). Results go to
RUN/evals/handwritten_bookings/ (metrics.json, predictions.jsonl); `peftkit eval RUN --data FILE`
scores base and tuned on the same file, with the verdict.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peftkit.catalog.shipping_emails import HANDWRITTEN_BOOKINGS
from peftkit.errors import DataError
from peftkit.recipe import load_recipe
from peftkit.resources import human_bytes, peak_rss_bytes
from peftkit.rundir import read_metrics, update_metrics


@dataclass
class QuickstartSummary:
    run_dir: Path
    metrics: dict
    wall_seconds: float
    peak_rss_bytes: int
    handwritten: dict | None = None  # tuned scores on the hand-written emails (score_handwritten)

    def table(self) -> Table:
        m = self.metrics
        base, tuned, train, merge = m["base"], m["tuned"], m["train"], m.get("merge", {})
        table = Table("", "base", "tuned", title=f"peftkit quickstart — {self.run_dir}", title_justify="left")
        table.add_row(f"generated test emails ({tuned['examples']})", "", "")
        for key, label in (("field_accuracy", "field accuracy"), ("json_valid", "JSON valid"), ("exact_match", "exact match")):
            table.add_row(f"  {label}", f"{base[key]:.1%}", f"{tuned[key]:.1%}")
        for field, value in tuned["per_field"].items():
            table.add_row(f"    {field}", f"{base['per_field'][field]:.1%}", f"{value:.1%}")
        if "verdict" in m:
            v = m["verdict"]
            table.add_row("  verdict", "", f"{v['answer'].capitalize()} — {v['why'].split('; ')[0]}")
        for name, metrics in m.get("forgetting", {}).get("deltas", {}).items():
            for metric in ("perplexity", "token_accuracy"):
                if metric in metrics and (metric != "perplexity" or "token_accuracy" not in metrics):
                    d = metrics[metric]
                    change = f"{d['delta']:+.1%}" if d["relative"] else f"{d['delta'] * 100:+.1f} pts"
                    table.add_row(f"general {name} {metric} (forgetting)", f"{d['base']:.3f}", f"{d['tuned']:.3f} ({change})")
        if self.handwritten:
            h = self.handwritten
            table.add_row(f"hand-written emails ({h['examples']})", "", "")
            for key, label in (("field_accuracy", "field accuracy"), ("json_valid", "JSON valid"), ("exact_match", "exact match")):
                table.add_row(f"  {label}", "not scored", f"{h[key]:.1%}")
            weakest = sorted(h["per_field"].items(), key=lambda kv: kv[1])[:3]
            table.add_row("  weakest fields", "", ", ".join(f"{k} {v:.0%}" for k, v in weakest))
        table.add_section()
        table.add_row("trainable parameters", "", f"{train['trainable_params']:,} ({train['trainable_percent']:.2f}%)")
        table.add_row("adapter / model on disk", "",
                      f"{human_bytes(train['adapter_bytes'])} / {human_bytes(train['base_model_bytes'])} "
                      f"({train['adapter_bytes'] / train['base_model_bytes']:.1%})")
        table.add_row("training", "", f"{train['steps']} steps, {train['seconds_per_step']:.1f} s/step, "
                      f"{train['tokens_per_second']:.0f} tokens/s")
        if merge:
            table.add_row("merge parity (max |Δlogit|)", "", f"{merge['max_abs_diff']:.1e} ≤ {merge['atol']:g}")
        table.add_row("wall time", "", f"{self.wall_seconds / 60:.1f} min")
        table.add_row("peak memory (RSS)", "", human_bytes(self.peak_rss_bytes))
        if (self.run_dir / "report.html").is_file():
            table.add_row("report", "", str(self.run_dir / "report.html"))
        return table


def quickstart(overrides: list[str] | None = None, console: Console | None = None) -> QuickstartSummary:
    """Train, evaluate and (if `export.merge`) merge the quickstart recipe in one process."""
    from peftkit.evaluate.run import evaluate
    from peftkit.export.merge import merge
    from peftkit.train.run import train

    console = console or Console(stderr=True)
    started = time.perf_counter()
    recipe = load_recipe("quickstart", overrides)
    result = train(recipe, console=console)
    evaluate(result.run_dir, console=console)
    handwritten = score_handwritten(result.run_dir, console=console)
    if recipe.export.merge:
        merge(result.run_dir, console=console)
    return QuickstartSummary(result.run_dir, read_metrics(result.run_dir), time.perf_counter() - started,
                             peak_rss_bytes(), handwritten)


def score_handwritten(run_dir: str | Path, data: str | Path = HANDWRITTEN_BOOKINGS, console: Console | None = None) -> dict:
    """The tuned model's extraction scores on a labelled file (default: the hand-written booking emails).

    Answers come from `peftkit predict` (eval's tuned model, prompts and greedy decoding) and are
    scored with eval's `extraction_scores`; both go to RUN/evals/<file stem>/ (predictions.jsonl and
    metrics.json's "tuned" and "eval" sections). Returns the scores ({"field_accuracy", "json_valid",
    "exact_match", "per_field", "examples"}).
    """
    from peftkit.data.readers import read_file
    from peftkit.evaluate.metrics import extraction_scores, parse_json_object
    from peftkit.predict import predict

    data = Path(data)
    unlabelled = [raw.where for raw in read_file(data)[0]
                  if not isinstance(raw.record, dict) or parse_json_object(str(raw.record.get("output", ""))) is None]
    if unlabelled:  # checked before the model is loaded
        raise DataError(f"{', '.join(unlabelled[:10])}: expected an 'output' field holding the booking as a JSON "
                        f"object string (shipping_emails.booking_json)")
    out_dir = Path(run_dir) / "evals" / data.name.removesuffix(".jsonl")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = predict(run_dir, data, out_dir / "predictions.jsonl", console=console)
    rows = [json.loads(line) for line in result.out_path.read_text(encoding="utf-8").splitlines()]
    scores = extraction_scores([r["prediction"] for r in rows], [r["output"] for r in rows])
    update_metrics(out_dir, tuned=scores, eval={"split": "file", "data": str(data), "examples": len(rows),
                                                "scored": "tuned only", "tuned_model": result.tuned_model,
                                                "seconds": result.seconds})
    return scores


from peftkit._stages import make_callable  # noqa: E402

make_callable(__name__, __name__, "quickstart")  # peftkit.quickstart() calls quickstart()
