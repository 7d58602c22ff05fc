"""Record shapes per task, their validation, and how a record becomes a chat prompt + completion.

Canonical records (what `data/{train,val,test}.jsonl` in a run directory hold):
- extraction:     {"input": str, "output": str}
- chat:           {"messages": [{"role", "content"}, ...]}  ending with an assistant turn
- classification: {"text": str, "label": str}
- completion:     {"prompt": str, "completion": str}  (a bare `text` becomes prompt "" + completion)
- preference:     {"prompt": str, "chosen": str, "rejected": str}  (stored for DPO)

Input record formats (what a user's file holds, see `formats.py` for detection) and the tasks each
can feed:
- instruction:    {"instruction", "input"?, "response"}   -> chat (default) or extraction
- extraction:     {"input", "output"}                     -> extraction (default) or chat
- chat, completion, preference, classification            -> the task of the same name

Text must be Unicode: JSON can spell half of a UTF-16 surrogate pair alone (`"\\ud83d"`), which
decodes to a string no tokenizer or UTF-8 writer accepts, so such a field is a row problem here.
"""

from __future__ import annotations

import re
from typing import Any

CHAT_ROLES = ("system", "user", "assistant")
# json pairs a high and low surrogate escape into one character, so any surrogate left is unpaired
_SURROGATE = re.compile("[\ud800-\udfff]")


FORMAT_TASKS = {  # record format -> tasks it can feed (first is the default)
    "instruction": ("chat", "extraction"),
    "extraction": ("extraction", "chat"),
    "chat": ("chat",),
    "completion": ("completion",),
    "preference": ("preference",),
    "classification": ("classification",),
}


def record_problems(record: Any, fmt: str) -> list[str]:
    """Every problem of one record of format `fmt` as 'field: expected …, found …' strings (empty when valid)."""
    if not isinstance(record, dict):
        return [f"record: expected a JSON object, found {type(record).__name__}"]
    if fmt == "classification":
        return _text_field(record, "text") + _label_field(record)
    if fmt == "extraction":
        return _text_field(record, "input") + _text_field(record, "output")
    if fmt == "chat":
        return _chat_problems(record)
    if fmt == "instruction":
        optional = _text_field(record, "input", allow_empty=True) if record.get("input") is not None else []
        return _text_field(record, "instruction") + optional + _text_field(record, "response")
    if fmt == "completion":
        if "prompt" in record or "completion" in record:
            return _text_field(record, "prompt", allow_empty=True) + _text_field(record, "completion")
        return _text_field(record, "text")
    if fmt == "preference":
        problems = _text_field(record, "prompt") + _text_field(record, "chosen") + _text_field(record, "rejected")
        if not problems and record["chosen"].strip() == record["rejected"].strip():
            problems.append("chosen: equal to rejected (a preference pair needs two different answers)")
        return problems
    raise ValueError(f"unknown record format {fmt!r}")


def _text_field(record: dict, field: str, allow_empty: bool = False) -> list[str]:
    if field not in record:
        return [f"{field}: missing (expected a non-empty string)"]
    value = record[field]
    if value is None:
        return [f"{field}: null (expected a non-empty string)"]
    if not isinstance(value, str):
        return [f"{field}: expected a string, found {type(value).__name__}"]
    if has_surrogate(value):
        return [_surrogate_problem(field, value)]
    if not value.strip() and not allow_empty:
        return [f"{field}: empty text"]
    return []


def _label_field(record: dict) -> list[str]:
    if "label" not in record:
        return ["label: missing (expected a string or integer)"]
    label = record["label"]
    if label is None:
        return ["label: null (expected a string or integer)"]
    if not isinstance(label, (str, int)) or isinstance(label, bool):
        return [f"label: expected a string or integer, found {type(label).__name__}"]
    if isinstance(label, str) and has_surrogate(label):
        return [_surrogate_problem("label", label)]
    if isinstance(label, str) and not label.strip():
        return ["label: empty (expected a string or integer)"]
    return []


def has_surrogate(text: str) -> bool:
    """Whether `text` holds an unpaired UTF-16 surrogate (it has no UTF-8 form)."""
    return _SURROGATE.search(text) is not None


def _surrogate_problem(field: str, text: str) -> str:
    at = _SURROGATE.search(text).start()
    return (f"{field}: text holds an unpaired UTF-16 surrogate (\\u{ord(text[at]):04x}) at position {at + 1}; "
            "the JSON has half of an escaped pair such as \\ud83d\\ude00: write the whole pair or the character itself")


def _chat_problems(record: dict) -> list[str]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["messages: expected a non-empty list of {role, content}"]
    problems = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            problems.append(f"{where}: expected an object with role and content")
            continue
        if msg.get("role") not in CHAT_ROLES:
            problems.append(f"{where}.role: expected one of {', '.join(CHAT_ROLES)}, found {msg.get('role')!r}")
        if msg.get("role") == "system" and i != 0:
            problems.append(f"{where}.role: a system message must come first")
        if not isinstance(msg.get("content"), str):
            found = type(msg.get("content")).__name__ if "content" in msg else "nothing"
            problems.append(f"{where}.content: expected text, found {found}")
        elif has_surrogate(msg["content"]):
            problems.append(_surrogate_problem(f"{where}.content", msg["content"]))
        elif not msg["content"].strip():
            turn = "an empty assistant turn" if msg.get("role") == "assistant" else "empty text"
            problems.append(f"{where}.content: {turn}")
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") != "assistant":
        problems.append(f"messages[{len(messages) - 1}].role: a chat must end with an assistant turn")
    return problems


def canonical(record: dict, fmt: str, task: str) -> dict:
    """The task's canonical record from a valid record of format `fmt` (labels become strings)."""
    if fmt == "instruction":
        user = record["instruction"].strip()
        if (record.get("input") or "").strip():
            user += "\n\n" + record["input"].strip()
        record, fmt = {"input": user, "output": record["response"]}, "extraction"
    if fmt == "extraction" and task == "chat":
        return {"messages": [{"role": "user", "content": record["input"]},
                             {"role": "assistant", "content": record["output"]}]}
    if task == "classification":
        return {"text": record["text"], "label": str(record["label"])}
    if task == "extraction":
        return {"input": record["input"], "output": record["output"]}
    if task == "completion":
        if "prompt" in record or "completion" in record:
            return {"prompt": record.get("prompt") or "", "completion": record["completion"]}
        return {"prompt": "", "completion": record["text"]}
    if task == "preference":
        return {"prompt": record["prompt"], "chosen": record["chosen"], "rejected": record["rejected"]}
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]}


def text_fields(record: dict) -> list[str]:
    """The texts of a canonical record, in order: what dedup, leakage and cleaning look at."""
    if "messages" in record:
        return [m["content"] for m in record["messages"]]
    keys = ("input", "output", "text", "prompt", "completion", "chosen", "rejected")
    return [record[k] for k in keys if isinstance(record.get(k), str)]


def to_prompt_completion(record: dict, task: str, instruction: str | None) -> dict:
    """Prompt/completion for trl: loss falls on the completion (assistant) only.

    The record's shape decides (a chat record mixed into an extraction run for replay is a chat):
    for chat records the final assistant turn is the completion and earlier turns are the prompt;
    completion records stay plain text (trl appends the EOS token).
    """
    if "messages" in record:
        task = "chat"
    elif "completion" in record:
        return {"prompt": record["prompt"], "completion": record["completion"]}
    if task == "extraction":
        prompt = [{"role": "user", "content": record["input"]}]
        if instruction:
            prompt.insert(0, {"role": "system", "content": instruction})
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": record["output"]}]}
    if task == "chat":
        return {"prompt": record["messages"][:-1], "completion": record["messages"][-1:]}
    raise ValueError(f"task {task!r} is not a generation task")
