"""Record shapes per task, their validation, and how a record becomes a chat prompt + completion.

Canonical records (what `data/{train,val,test}.jsonl` in a run directory hold):
- extraction:     {"input": str, "output": str}
- chat:           {"messages": [{"role", "content"}, ...]}  ending with an assistant turn
- classification: {"text": str, "label": str}
"""

from __future__ import annotations

from typing import Any

CHAT_ROLES = ("system", "user", "assistant")


def record_problems(record: Any, task: str) -> list[str]:
    """Every problem of one record as 'field: expected …, found …' strings (empty when valid)."""
    if not isinstance(record, dict):
        return [f"record: expected a JSON object, found {type(record).__name__}"]
    if task == "classification":
        return _text_field(record, "text") + _label_field(record)
    if task == "extraction":
        return _text_field(record, "input") + _text_field(record, "output")
    if task == "chat":
        return _chat_problems(record)
    raise ValueError(f"unknown task {task!r}")


def _text_field(record: dict, field: str) -> list[str]:
    if field not in record:
        return [f"{field}: missing (expected a non-empty string)"]
    value = record[field]
    if not isinstance(value, str):
        return [f"{field}: expected a string, found {type(value).__name__}"]
    if not value.strip():
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
    return []


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
        if not isinstance(msg.get("content"), str) or not msg["content"].strip():
            problems.append(f"{where}.content: expected non-empty text")
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") != "assistant":
        problems.append(f"messages[{len(messages) - 1}].role: a chat must end with an assistant turn")
    return problems


def canonical(record: dict, task: str) -> dict:
    """Keep the fields the task uses (labels as strings); call only on valid records."""
    if task == "classification":
        return {"text": record["text"], "label": str(record["label"])}
    if task == "extraction":
        return {"input": record["input"], "output": record["output"]}
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]}


def to_prompt_completion(record: dict, task: str, instruction: str | None) -> dict:
    """Conversational prompt/completion for trl: loss falls on the completion (assistant) only.

    For chat records the final assistant turn is the completion and earlier turns are the prompt.
    """
    if task == "extraction":
        prompt = [{"role": "user", "content": record["input"]}]
        if instruction:
            prompt.insert(0, {"role": "system", "content": instruction})
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": record["output"]}]}
    if task == "chat":
        return {"prompt": record["messages"][:-1], "completion": record["messages"][-1:]}
    raise ValueError(f"task {task!r} is not a generation task")
