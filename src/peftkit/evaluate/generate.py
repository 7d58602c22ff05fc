"""Batched greedy generation and batched classification (labels, or labels and probabilities), with a progress bar.

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


def classify(model, tokenizer, texts: list[str], labels: list[str], batch_size: int, max_length: int,
             progress: Progress, label: str) -> list[str]:
    """Predicted label names, argmax of the classifier logits."""
    predicted: list[str] = []
    for logits in _classifier_logits(model, tokenizer, texts, batch_size, max_length, progress, label):
        predicted += [labels[i] for i in logits.argmax(-1).tolist()]
    return predicted


def classify_probabilities(model, tokenizer, texts: list[str], labels: list[str], batch_size: int, max_length: int,
                           progress: Progress, label: str) -> list[tuple[str, dict[str, float]]]:
    """Per text: the predicted label (argmax of the logits, as `classify`) and {label: probability}, the
    softmax of the logits over every label of the run."""
    out: list[tuple[str, dict[str, float]]] = []
    for logits in _classifier_logits(model, tokenizer, texts, batch_size, max_length, progress, label):
        probs = logits.float().softmax(-1)  # [batch, num_labels]
        for best, row in zip(logits.argmax(-1).tolist(), probs.tolist()):
            out.append((labels[best], dict(zip(labels, row))))
    return out


@torch.no_grad()
def _classifier_logits(model, tokenizer, texts: list[str], batch_size: int, max_length: int, progress: Progress,
                       label: str):
    """The classifier's logits, one [batch, num_labels] tensor per batch of texts (truncated to max_length tokens)."""
    model.eval()
    task = progress.add_task(label, total=len(texts))
    for chunk in batches(texts, batch_size):
        enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        yield model(**enc.to(model.device)).logits  # [batch, num_labels]
        progress.advance(task, len(chunk))
