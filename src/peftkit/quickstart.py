"""`peftkit quickstart`: recipes/quickstart.yaml end to end — train, eval, merge — and one table.

The table answers "did it work, what did it cost": base vs tuned field accuracy, JSON validity and
exact match; trainable parameters and their share; adapter vs model size on disk; wall time; peak
memory; seconds per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peftkit.recipe import load_recipe
from peftkit.resources import human_bytes, peak_rss_bytes
from peftkit.rundir import read_metrics


@dataclass
class QuickstartSummary:
    run_dir: Path
    metrics: dict
    wall_seconds: float
    peak_rss_bytes: int

    def table(self) -> Table:
        m = self.metrics
        base, tuned, train, merge = m["base"], m["tuned"], m["train"], m.get("merge", {})
        table = Table("", "base", "tuned", title=f"peftkit quickstart — {self.run_dir}", title_justify="left")
        for key, label in (("field_accuracy", "field accuracy"), ("json_valid", "JSON valid"), ("exact_match", "exact match")):
            table.add_row(label, f"{base[key]:.1%}", f"{tuned[key]:.1%}")
        for field, value in tuned["per_field"].items():
            table.add_row(f"  {field}", f"{base['per_field'][field]:.1%}", f"{value:.1%}")
        for name, metrics in m.get("forgetting", {}).get("deltas", {}).items():
            for metric in ("perplexity", "token_accuracy"):
                if metric in metrics and (metric != "perplexity" or "token_accuracy" not in metrics):
                    d = metrics[metric]
                    change = f"{d['delta']:+.1%}" if d["relative"] else f"{d['delta'] * 100:+.1f} pts"
                    table.add_row(f"general {name} {metric} (forgetting)", f"{d['base']:.3f}", f"{d['tuned']:.3f} ({change})")
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
    if recipe.export.merge:
        merge(result.run_dir, console=console)
    return QuickstartSummary(result.run_dir, read_metrics(result.run_dir), time.perf_counter() - started, peak_rss_bytes())


from peftkit._stages import make_callable  # noqa: E402

make_callable(__name__, __name__, "quickstart")  # peftkit.quickstart() calls quickstart()
