"""Attention inspection: entropy per layer and head, base vs tuned, on one text.

    peftkit inspect attention RUN --text "Please book 2 x 40HC from Shanghai to Rotterdam"
    result = inspect_attention("runs/quickstart-…", text="…", layers=[0, 29])

The model is loaded with eager attention (the only implementation that returns the attention
probabilities) and run once with `output_attentions=True`, without and then with the adapter.
For each head, the entropy of every query row's attention distribution is H = -Σ p log p (nats);
a head's entropy is the mean over query rows. Because a causal row i sees only i+1 keys, heads are
also compared by normalised entropy H / log(keys visible), which is 0 when one key takes all the
attention (a *collapsed* head, e.g. an attention sink on the first token) and 1 when attention is
uniform (a *diffuse* head). Rows that see a single key carry no information and are skipped.

Writes RUN/attention/: attention.json (entropies, flagged heads, the heads that changed most),
entropy.png (layer × head grids: base, tuned, change) and one heatmap per chosen head
(head_L{l}_H{h}.png, base and tuned side by side); report.html shows them all.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from peftkit.errors import PeftkitError, RecipeError

COLLAPSED_BELOW = 0.1  # normalised entropy at or below: one key dominates
DIFFUSE_ABOVE = 0.9  # normalised entropy at or above: close to uniform
MAX_LABELLED_TOKENS = 48  # heatmaps label their axes with tokens up to this length


def row_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each distribution along the last dimension; 0·log 0 counts as 0.
    [..., keys] → [...]"""
    p = probs.float()
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def head_entropies(attn: torch.Tensor, causal: bool, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Mean entropy and mean normalised entropy of each head.

    Args:
        attn: attention probabilities of one layer for one sequence, [heads, queries, keys].
        causal: query row i sees keys 0..i (decoder) rather than every key (encoder).
        mask: [keys] 1 for real tokens, 0 for padding (default: all real).
    Returns:
        {"entropy": [heads], "normalised": [heads]}
    """
    heads, q, k = attn.shape
    mask = torch.ones(k) if mask is None else mask.float()
    visible = torch.cumsum(mask, 0)[:q] if causal else mask.sum().expand(q)  # [queries]: keys each row sees
    rows = (visible > 1) & (mask[:q] > 0)  # a row that sees one key has entropy 0 by construction
    if not rows.any():
        raise PeftkitError("attention inspection needs a text of at least two tokens")
    h = row_entropy(attn)[:, rows]  # [heads, rows]
    normalised = h / torch.log(visible[rows])
    return {"entropy": h.mean(-1), "normalised": normalised.mean(-1)}


@dataclass
class AttentionResult:
    out_dir: Path
    summary: dict  # the content of attention.json


def attention_maps(model, tokenizer, text: str, max_length: int) -> tuple[list[torch.Tensor], list[str]]:
    """Attention probabilities of every layer, [heads, tokens, tokens] each, and the tokens."""
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length).to(model.device)
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    if out.attentions is None or any(a is None for a in out.attentions):
        raise PeftkitError("the model returned no attention probabilities (eager attention is required)")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    return [a[0].float().cpu() for a in out.attentions], tokens


def entropy_grid(maps: list[torch.Tensor], causal: bool) -> dict[str, list[list[float]]]:
    """{"entropy", "normalised"}: [layers][heads] lists."""
    per_layer = [head_entropies(a, causal) for a in maps]
    return {key: [d[key].tolist() for d in per_layer] for key in ("entropy", "normalised")}


def flag_heads(normalised: list[list[float]]) -> dict[str, list[dict]]:
    collapsed, diffuse = [], []
    for layer, row in enumerate(normalised):
        for head, value in enumerate(row):
            if value <= COLLAPSED_BELOW:
                collapsed.append({"layer": layer, "head": head, "normalised": value})
            elif value >= DIFFUSE_ABOVE:
                diffuse.append({"layer": layer, "head": head, "normalised": value})
    return {"collapsed": collapsed, "diffuse": diffuse}


def most_changed(base: list[list[float]], tuned: list[list[float]], top: int) -> list[dict]:
    changes = [{"layer": l, "head": h, "base": b, "tuned": tuned[l][h], "change": tuned[l][h] - b}
               for l, row in enumerate(base) for h, b in enumerate(row)]
    return sorted(changes, key=lambda c: abs(c["change"]), reverse=True)[:top]


def inspect_attention(run_dir: str | Path, text: str, layers: list[int] | None = None, heads: list[int] | None = None,
                      top: int = 5, max_length: int = 128) -> AttentionResult:
    """Entropy per layer/head for base and tuned on `text`, heatmaps, flags; written to RUN/attention/.

    Args:
        layers, heads: heads to draw as heatmaps (every combination); default: the `top` heads
            whose entropy changed most (at most 4 drawn).
        top: how many most-changed heads to list.
    """
    from peftkit.data.prepare import load_prepared
    from peftkit.loading import load_base_model, load_tokenizer
    from peftkit.methods import PROMPT_LEARNING_KINDS, artifact_name, base_quantization, load_tuned, trained_precision
    from peftkit.rundir import open_run, require

    if not text.strip():
        raise RecipeError("--text: give the text to inspect (it is empty)")
    run_dir, recipe = open_run(run_dir)
    method = recipe.method
    if method.kind in PROMPT_LEARNING_KINDS:
        raise RecipeError(
            f"method.kind: {method.kind} tuning cannot be inspected head by head against the base: it adds "
            f"{method.num_virtual_tokens} virtual {'tokens' if method.kind == 'prompt' else 'keys per layer'} that "
            f"take part of every row's attention, so base and tuned attention maps have different shapes and "
            f"their entropies are not comparable")
    require(run_dir, artifact_name(method), "train")
    prepared = load_prepared(run_dir / "data")
    tokenizer = load_tokenizer(recipe.model)
    task = "sequence-classification" if prepared.task == "classification" else "causal-lm"
    model = load_base_model(recipe.model, prepared.task, prepared.labels, recipe.train.seed,
                            quantization=base_quantization(method, task, trained_precision(recipe)))  # qlora: the 4-bit base, as trained
    model.set_attn_implementation("eager")  # sdpa/flash kernels never materialise the probabilities
    causal = prepared.task != "classification"

    def load_full(folder: Path):
        tuned = load_base_model(recipe.model.model_copy(update={"name": str(folder)}), prepared.task,
                                prepared.labels, recipe.train.seed)
        tuned.set_attn_implementation("eager")
        return tuned

    base_maps, tokens = attention_maps(model, tokenizer, text, max_length)
    # base + RUN/adapter, or RUN/model for full fine-tuning
    tuned_model = load_tuned(None if method.kind == "full" else model, method, run_dir, load_full=load_full)
    tuned_maps, _ = attention_maps(tuned_model, tokenizer, text, max_length)
    n_layers, n_heads = len(base_maps), base_maps[0].shape[0]
    for name, values, limit in (("--layers", layers, n_layers), ("--heads", heads, n_heads)):
        bad = [v for v in values or [] if not 0 <= v < limit]
        if bad:
            raise RecipeError(f"{name}: {bad} out of range; the model has {limit} ({'0'}..{limit - 1})")

    base, tuned = entropy_grid(base_maps, causal), entropy_grid(tuned_maps, causal)
    changed = most_changed(base["entropy"], tuned["entropy"], top)
    chosen = ([(l, h) for l in (layers or range(n_layers)) for h in (heads or range(n_heads))]
              if layers or heads else [(c["layer"], c["head"]) for c in changed[:4]])
    out_dir = run_dir / "attention"
    out_dir.mkdir(exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    images = [_entropy_png(base["entropy"], tuned["entropy"], out_dir / "entropy.png")]
    for layer, head in chosen:
        images.append(_head_png(base_maps[layer][head], tuned_maps[layer][head], tokens, layer, head,
                                out_dir / f"head_L{layer}_H{head}.png"))
    summary = {
        "text": text,
        "tokens": tokens,
        "causal": causal,
        "layers": n_layers,
        "heads": n_heads,
        "max_entropy_nats": math.log(len(tokens)),
        "collapsed_below": COLLAPSED_BELOW,
        "diffuse_above": DIFFUSE_ABOVE,
        "base": {**base, **flag_heads(base["normalised"])},
        "tuned": {**tuned, **flag_heads(tuned["normalised"])},
        "most_changed": changed,
        "images": [p.name for p in images],
    }
    (out_dir / "attention.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return AttentionResult(out_dir, summary)


def _entropy_png(base: list[list[float]], tuned: list[list[float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, t = torch.tensor(base), torch.tensor(tuned)  # [layers, heads]
    fig, axes = plt.subplots(1, 3, figsize=(13, max(3.0, 0.18 * b.shape[0] + 1.5)))
    for ax, (title, grid, cmap) in zip(axes, (("base entropy (nats)", b, "viridis"), ("tuned entropy (nats)", t, "viridis"),
                                              ("tuned − base", t - b, "coolwarm"))):
        kwargs = {}
        if cmap == "coolwarm":
            span = float((t - b).abs().max()) or 1e-6
            kwargs = {"vmin": -span, "vmax": span}
        im = ax.imshow(grid.numpy(), aspect="auto", cmap=cmap, **kwargs)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def _head_png(base: torch.Tensor, tuned: torch.Tensor, tokens: list[str], layer: int, head: int, path: Path) -> Path:
    """Heatmaps of one head's attention matrix [queries, keys], base and tuned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tokens)
    size = min(6.0, 2.5 + 0.1 * n)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    labels = [t.replace("Ġ", "·").replace("Ċ", "\\n") for t in tokens]
    for ax, (title, matrix) in zip(axes, (("base", base), ("tuned", tuned))):
        ax.imshow(matrix.numpy(), cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"layer {layer} head {head}: {title}, H={row_entropy(matrix).mean():.2f}", fontsize=9)
        if n <= MAX_LABELLED_TOKENS:
            ax.set_xticks(range(n), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(n), labels, fontsize=6)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path
