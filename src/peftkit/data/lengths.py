"""Token lengths with the model's own tokenizer, their statistics, and a histogram PNG.

    lengths = token_lengths(rows, "chat", tokenizer, instruction=None)   # as the trainer will see them
    stats = length_stats(lengths, max_length=512)    # min/mean/p50/p95/max, over_max
    save_histogram({"train": lengths}, 512, Path("lengths.png"))

A generation row is measured as the trainer renders it (chat template over prompt + completion);
a classification row as the encoder tokenizes it (with its special tokens).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from peftkit.data.records import to_prompt_completion


def render_text(record: dict, task: str, instruction: str | None, tokenizer) -> str:
    """The text the trainer tokenizes for one canonical record."""
    if task == "classification":
        return record["text"]
    if task == "preference":
        longer = max(record["chosen"], record["rejected"], key=len)
        messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": longer}]
        return _chat_text(tokenizer, messages, record["prompt"] + longer)
    pc = to_prompt_completion(record, task, instruction)
    if isinstance(pc["prompt"], str):  # completion: plain text, trl appends EOS
        return pc["prompt"] + pc["completion"] + (tokenizer.eos_token or "")
    return _chat_text(tokenizer, pc["prompt"] + pc["completion"], None)


def _chat_text(tokenizer, messages: list[dict], fallback: str | None) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    if fallback is not None:
        return fallback
    return "\n".join(m["content"] for m in messages)


def token_lengths(rows: list[dict], task: str, tokenizer, instruction: str | None = None, batch: int = 512) -> list[int]:
    """Tokens per canonical record, as the training path would count them."""
    texts = [render_text(r, task, instruction, tokenizer) for r in rows]
    special = task == "classification"  # chat templates already hold their special tokens
    out: list[int] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], add_special_tokens=special)["input_ids"]
        out += [len(ids) for ids in enc]
    return out


def length_stats(lengths: list[int], max_length: int) -> dict:
    if not lengths:
        return {"rows": 0, "over_max": 0}
    a = np.asarray(lengths)
    return {
        "rows": len(lengths),
        "min": int(a.min()),
        "mean": round(float(a.mean()), 1),
        "p50": int(np.percentile(a, 50)),
        "p95": int(np.percentile(a, 95)),
        "max": int(a.max()),
        "over_max": int((a > max_length).sum()),
    }


def save_histogram(lengths: dict[str, list[int]], max_length: int | None, path: Path, title: str = "") -> Path:
    """A PNG histogram of token lengths per split, with the max_length cut-off drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    every = [x for v in lengths.values() for x in v]
    bins = np.histogram_bin_edges(every or [0], bins=40)
    for name, values in lengths.items():
        if values:
            ax.hist(values, bins=bins, alpha=0.6, label=f"{name} ({len(values)})")
    if max_length:
        ax.axvline(max_length, color="red", linestyle="--", label=f"max_length {max_length}")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title(title or "token lengths")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
