"""Batched greedy generation and batched classification, with a progress bar.

Both the base and the tuned model go through the same functions with the same prompts and
decoding, so their scores differ only by the adapter.
"""

from __future__ import annotations

import torch
from rich.progress import Progress


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[dict] | str], batch_size: int, max_new_tokens: int,
                     progress: Progress, label: str) -> list[str]:
    """Greedy answers to chat prompts (lists of messages) or plain-text prompts, decoded without special tokens."""
    model.eval()
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    task = progress.add_task(label, total=len(prompts))
    answers: list[str] = []
    for chunk in batches(prompts, batch_size):
        # chat prompts (lists of messages) get the chat template; plain-text prompts are continued as they are
        texts = [p if isinstance(p, str) else tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                 for p in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = out[:, enc["input_ids"].shape[1] :]  # [batch, generated]
        answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        progress.advance(task, len(chunk))
    return answers


@torch.no_grad()
def classify(model, tokenizer, texts: list[str], labels: list[str], batch_size: int, max_length: int,
             progress: Progress, label: str) -> list[str]:
    """Predicted label names, argmax of the classifier logits."""
    model.eval()
    task = progress.add_task(label, total=len(texts))
    predicted: list[str] = []
    for chunk in batches(texts, batch_size):
        enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        logits = model(**enc.to(model.device)).logits  # [batch, num_labels]
        predicted += [labels[i] for i in logits.argmax(-1).tolist()]
        progress.advance(task, len(chunk))
    return predicted
