"""Template check: render examples with the model's chat template and verify what training will see.

    shown = check_templates({"train": rows, ...}, task, instruction, tokenizer, stop_ids)
    print(shown[0].marked)      # the rendered example, the loss-masked part between ⟦ and ⟧

For every generation row it verifies, with the tokenizer itself:
- each assistant turn ends with a token the model stops on (EOS / end-of-turn, from the tokenizer
  and the model's generation_config), followed by nothing but whitespace;
- the loss mask, computed as trl computes it for our training path (prompt rendered with the
  generation prompt, prompt+completion rendered whole, the mask starting at their common prefix),
  covers exactly the final assistant answer and its end-of-turn token - no prompt tokens, nothing missing.
A mismatch is a DataError that shows the rendered text. Classification (an encoder) has no template.

Multi-turn chats: trl trains on the final assistant turn (prompt/completion); earlier assistant
turns are context, and they too must end with the stop token, since the model learns from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peftkit.data.records import to_prompt_completion
from peftkit.errors import DataError

MARK_OPEN, MARK_CLOSE = "⟦", "⟧"
ROWS_PER_SPLIT = 1000  # rows rendered per split; `special_token_problems` scans every row


@dataclass
class TemplateExample:
    split: str
    where: str
    marked: str  # rendered text with the loss-masked tokens between ⟦ and ⟧
    rows_checked: int


class _Mismatch(Exception):
    pass


def stop_token_ids(tokenizer, model_source: str | Path | None = None) -> set[int]:
    """Tokens generation stops on: the tokenizer's EOS and the model's generation_config eos_token_id."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if model_source and Path(model_source, "generation_config.json").is_file():
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_source).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids


def check_templates(splits: dict[str, list[tuple[dict, str]]], task: str, instruction: str | None,
                    tokenizer, stop_ids: set[int]) -> list[TemplateExample]:
    """Check the first ROWS_PER_SPLIT rows of each split; return the first row of each, rendered and marked.

    A template renders every row alike, so a sample finds template mistakes; what differs per row
    (an answer that contains the end-of-turn token itself) is caught on every row by
    `special_token_problems`.
    """
    if task == "classification":
        return []
    conversational = task != "completion"
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"template check: the model's tokenizer has no chat template; a {task} task needs one "
                        "(use a chat/instruct model, or task: completion for plain text)")
    if not stop_ids:
        raise DataError("template check: the tokenizer has no EOS token, so a trained model would never stop")
    shown = []
    for split, rows in splits.items():
        first = None
        for record, where in rows[:ROWS_PER_SPLIT]:
            try:
                marked = _check_row(record, task, instruction, tokenizer, stop_ids)
            except _Mismatch as exc:
                raise DataError(f"template check failed at {where} ({split}): {exc}") from None
            first = first or TemplateExample(split, where, marked, min(len(rows), ROWS_PER_SPLIT))
        if first:
            shown.append(first)
    return shown


def special_token_problems(record: dict, tokenizer) -> list[str]:
    """Fields whose text holds one of the tokenizer's special tokens (it would end a turn early or
    fake a role marker): 'field: contains the special token …' strings, empty when clean."""
    specials = [t for t in tokenizer.all_special_tokens if t and len(t) > 1]
    fields = ([(f"messages[{i}].content", m["content"]) for i, m in enumerate(record["messages"])]
              if "messages" in record else [(k, v) for k, v in record.items() if isinstance(v, str) and k != "label"])
    return [f"{name}: contains the special token {tok!r}, which the template uses as a marker"
            for name, text in fields for tok in specials if tok in text]


def _check_row(record: dict, task: str, instruction: str | None, tok, stop_ids: set[int]) -> str:
    if task == "preference":  # as DPO will render it: the prompt as a user turn, each answer as the reply
        for answer in (record["chosen"], record["rejected"]):
            pc = {"prompt": [{"role": "user", "content": record["prompt"]}],
                  "completion": [{"role": "assistant", "content": answer}]}
            marked = _check_conversation(pc["prompt"] + pc["completion"], tok, stop_ids)
        return marked
    pc = to_prompt_completion(record, task, instruction)
    if isinstance(pc["prompt"], str):
        return _check_plain(pc["prompt"], pc["completion"], tok, stop_ids)
    return _check_conversation(pc["prompt"] + pc["completion"], tok, stop_ids)


def _check_conversation(messages: list[dict], tok, stop_ids: set[int]) -> str:
    """Each assistant turn in turn; the last one is exactly trl's completion mask."""
    marked = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _ids(tok, messages[:i], generation_prompt=True)
        upto = _ids(tok, messages[: i + 1], generation_prompt=False)
        start = _check_turn(before, upto, msg["content"], tok, stop_ids, f"assistant turn messages[{i}]")
        marked = tok.decode(upto[:start]) + MARK_OPEN + tok.decode(upto[start:]) + MARK_CLOSE
    return marked


def _check_plain(prompt: str, completion: str, tok, stop_ids: set[int]) -> str:
    """Non-conversational prompt/completion, as trl tokenizes it (it appends EOS to the completion)."""
    eos = tok.eos_token or ""
    before = tok(prompt)["input_ids"]
    full_text = prompt + completion + ("" if completion.endswith(eos) else eos)
    upto = tok(full_text)["input_ids"]
    start = _check_turn(before, upto, completion, tok, stop_ids, "completion", _boundary_hint(prompt, completion))
    return tok.decode(upto[:start]) + MARK_OPEN + tok.decode(upto[start:]) + MARK_CLOSE


def _boundary_hint(prompt: str, completion: str) -> str:
    """What to add where prompt and completion meet with no word break, which a tokenizer merges across."""
    if not prompt or not completion or completion[0].isspace() or prompt.endswith("\n"):
        return ""
    before = ("…" if len(prompt) > 20 else "") + prompt[-20:]
    after = completion[:20] + ("…" if len(completion) > 20 else "")
    seam, fixed = f"'{before}|{after}', | marks where the completion starts", repr(" " + after)
    if prompt[-1].isspace():  # a trailing space is its own token alone but joins the next word in the whole text
        return (f" The prompt ends with a space, which the tokenizer joins to the word after it ({seam}): "
                f"move the space to the start of the completion ({fixed}).")
    return (f" The completion follows the prompt with nothing between them ({seam}), so the tokenizer merges "
            f"text across that point: start the completion with a space ({fixed}) or end the prompt with a newline.")


def _ids(tok, messages: list[dict], generation_prompt: bool) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt)
    return list(out["input_ids"])


def _check_turn(before: list[int], upto: list[int], content: str, tok, stop_ids: set[int], what: str,
                hint: str = "") -> int:
    """Where the trained span starts; raises _Mismatch unless it is `content` + a stop token + whitespace.

    `hint` is added to the message when the prompt is not a prefix: what to change in the data.
    """
    from trl.data_utils import common_prefix_length

    start = common_prefix_length(before, upto)
    rendered = tok.decode(upto)
    if start < len(before):
        raise _Mismatch(f"{what}: the prompt rendered alone is not a prefix of the rendered conversation "
                        f"(it ends with {tok.decode(before[start:])!r} instead), so the loss mask would start "
                        f"in the wrong place.{hint} Rendered:\n{rendered}")
    span = upto[start:]
    stop_at = next((k for k, t in enumerate(span) if t in stop_ids), None)
    stops = ", ".join(repr(tok.convert_ids_to_tokens(t)) for t in sorted(stop_ids))
    if stop_at is None:
        raise _Mismatch(f"{what} does not end with a token the model stops on ({stops}): the trained tokens are "
                        f"{tok.decode(span)!r}, so the model would never learn to stop. Rendered:\n{rendered}")
    answer, tail = tok.decode(span[:stop_at]), tok.decode(span[stop_at + 1 :])
    if answer.strip() != content.strip():
        raise _Mismatch(f"{what}: the loss mask covers {answer!r} before the end-of-turn token, not exactly the "
                        f"assistant answer {content!r}. Rendered:\n{rendered}")
    if tail.strip():
        raise _Mismatch(f"{what}: after the end-of-turn token the loss mask also covers {tail!r}. Rendered:\n{rendered}")
    return start
