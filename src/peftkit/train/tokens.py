"""Tokenise a run's splits once and cache the token ids in the run directory (Arrow, not pickle).

    ds = cached_tokens(run_dir / "data" / "tokens" / "train", key, build=lambda: sft_token_dataset(rows, tok, 256))

SFT examples become `input_ids` and `labels` (-100 on the prompt) exactly as trl builds them for a
conversational prompt/completion pair: the chat template renders the prompt with the generation
prompt and the prompt+completion; the completion starts where the two diverge. trl receives the
ids already made, so no tokenisation happens in the trainer or the training loop, and a later
stage (or a re-run in the same run directory) reads the cache instead of tokenising again. The
cache is keyed by a fingerprint of the split file, the tokenizer and the max length; a different
key rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

IGNORE_INDEX = -100
KEY_FILE = "peftkit_tokens.json"


def cache_key(split_file: Path, tokenizer, **settings) -> str:
    """Fingerprint of what the token ids depend on: the split's bytes, the tokenizer, the settings."""
    h = hashlib.sha256(split_file.read_bytes())
    h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def cached_tokens(cache_dir: Path, key: str, build: Callable):
    """The datasets.Dataset saved in `cache_dir` under `key`, or `build()` saved there first."""
    from datasets import load_from_disk

    key_file = cache_dir / KEY_FILE
    if key_file.is_file() and json.loads(key_file.read_text(encoding="utf-8")).get("key") == key:
        return load_from_disk(str(cache_dir))
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    dataset = build()
    dataset.save_to_disk(str(cache_dir))
    key_file.write_text(json.dumps({"key": key, "rows": len(dataset)}), encoding="utf-8")
    return load_from_disk(str(cache_dir))  # memory-mapped Arrow


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def sft_example_ids(tokenizer, prompt: list[dict] | str, completion: list[dict] | str, max_length: int | None) -> dict | None:
    """input_ids and labels (-100 outside the completion) of one example, truncated to max_length
    (keeping the start); None when truncation leaves no labelled token.

    A conversational pair (lists of messages) is rendered with the chat template; a plain-text pair
    (completion records) is tokenised as text with the EOS token appended to the completion, as trl does.
    """
    if isinstance(prompt, str):
        if not completion.endswith(tokenizer.eos_token):
            completion = completion + tokenizer.eos_token
        prompt_ids = tokenizer(text=prompt)["input_ids"]
        ids = tokenizer(text=prompt + completion)["input_ids"]
    else:
        prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True)["input_ids"]
        ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    start = _common_prefix_length(prompt_ids, ids)
    labels = [IGNORE_INDEX] * start + ids[start:]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def sft_token_dataset(pairs: list[dict], tokenizer, max_length: int | None):
    """A datasets.Dataset of input_ids/labels from prompt/completion pairs (examples left without a label dropped)."""
    from datasets import Dataset

    rows = [sft_example_ids(tokenizer, p["prompt"], p["completion"], max_length) for p in pairs]
    kept = [r for r in rows if r is not None]
    return Dataset.from_dict({
        "input_ids": [r["input_ids"] for r in kept],
        "labels": [r["labels"] for r in kept],
    })
