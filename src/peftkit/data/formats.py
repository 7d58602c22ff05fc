"""Record formats: map a user's columns, detect the format of a file's records, and say why.

    rows = apply_columns(rows, {"text": "review", "label": "sentiment"}, "data.jsonl")
    detected = detect_format(rows, "data.jsonl")   # Detection(format="classification", explanation="...")
    rows = apply_convention(rows, detected)         # a public set's field names -> record fields

Detection looks at which fields the records have (after column mapping) and picks the first
format whose required fields most records carry, in this order: chat (`messages`), preference
(`prompt`, `chosen`, `rejected`), instruction (`instruction`, `response`), extraction (`input`,
`output`), classification (`text`, `label`), completion (`prompt` + `completion`, or `text`).

The instruction format also takes the field names of the public sets users start from, with no
`data.columns` needed: Alpaca's `instruction`/`input`/`output` (`output` is the response) and
Dolly's `instruction`/`context`/`response` (`context` plays the role of `input`). Within a format,
the signature that asks for more fields is tried first, so Dolly's `context` is read, not ignored.

A renamed field must come from the named column: a row that lacks the column but carries the
record field's own name (`response` where `output` is mapped to it) is a row problem, never taken.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from peftkit.data.readers import RawRow
from peftkit.errors import DataError

# format -> alternatives of required fields (any one set is enough)
SIGNATURES: dict[str, tuple[tuple[str, ...], ...]] = {
    "chat": (("messages",),),
    "preference": (("prompt", "chosen", "rejected"),),
    "instruction": (("instruction", "response"),),
    "extraction": (("input", "output"),),
    "classification": (("text", "label"),),
    "completion": (("prompt", "completion"), ("text",)),
}
SAMPLE = 1000  # records looked at for detection


@dataclass(frozen=True)
class Convention:
    """A public data set's names for a record format's fields."""

    name: str  # "Alpaca"
    format: str  # the record format its records are
    fields: tuple[str, ...]  # its field names, as the explanation shows them
    required: tuple[str, ...]  # the fields detection looks for (most records must carry each)
    renames: dict[str, str]  # {record field: its field}, the shape of data.columns


CONVENTIONS = (
    Convention("Alpaca", "instruction", ("instruction", "input", "output"), ("instruction", "output"),
               {"response": "output"}),
    Convention("Dolly", "instruction", ("instruction", "context", "response"), ("instruction", "context", "response"),
               {"input": "context"}),
)


@dataclass
class Detection:
    format: str
    explanation: str
    convention: Convention | None = None  # the public set whose field names the records use


def apply_columns(rows: list[RawRow], columns: dict[str, str], source: str) -> list[RawRow]:
    """Rename the user's columns to record fields (`{field: column}`); a column no record has is an error."""
    if not columns:
        return rows
    known = {f for sigs in SIGNATURES.values() for sig in sigs for f in sig} | {"input"}
    unknown = sorted(set(columns) - known)
    if unknown:
        raise DataError(f"data.columns: unknown record field(s) {', '.join(unknown)} "
                        f"(fields are {', '.join(sorted(known))}; write {{field: your_column}})")
    seen: set[str] = set()
    for row in rows:
        if isinstance(row.record, dict):
            seen.update(row.record)
    missing = [f"{f}: {c}" for f, c in columns.items() if c not in seen]
    if missing:
        raise DataError(f"data.columns: {source} has no column {', '.join(missing)} "
                        f"(its columns: {', '.join(sorted(seen)) or 'none'})")
    return _rename(rows, columns, "data.columns maps {field} to it")


def apply_convention(rows: list[RawRow], detection: Detection) -> list[RawRow]:
    """Rename a detected public set's fields to record fields (Alpaca's `output` -> `response`)."""
    if detection.convention is None:
        return rows
    return _rename(rows, detection.convention.renames, _convention_note(detection.convention))


def file_field_names(problem: str, detection: Detection) -> str:
    """A validation problem named with the file's own field: 'response: missing' -> 'output: missing' for Alpaca."""
    renames = detection.convention.renames if detection.convention else {}
    name, sep, rest = problem.partition(":")
    return renames[name] + sep + rest if sep and name in renames else problem


def _rename(rows: list[RawRow], columns: dict[str, str], note: str) -> list[RawRow]:
    """Rows with `{field: column}` renamed; a row without the column but with the field itself is a problem."""
    out = []
    for row in rows:
        if isinstance(row.record, dict) and not row.problem:
            shadowed = [(f, c) for f, c in columns.items() if f != c and c not in row.record and f in row.record]
            if shadowed:
                problem = "; ".join(f"{c}: missing ({note.format(field=f)}); the row has "
                                    f"{'an' if f[0] in 'aeiou' else 'a'} `{f}` field" for f, c in shadowed)
                out.append(RawRow(row.where, row.record, problem))  # the record is kept for rejects.jsonl
                continue
            record = {k: v for k, v in row.record.items() if k not in columns.values()}
            record.update({field: row.record[col] for field, col in columns.items() if col in row.record})
            row = RawRow(row.where, record, row.problem)
        out.append(row)
    return out


def _convention_note(convention: Convention) -> str:
    renamed = ", ".join(f"{theirs} is read as {ours}" for ours, theirs in convention.renames.items())
    return f"{convention.name} fields {'/'.join(convention.fields)}: {renamed}"


def _signatures(fmt: str) -> list[tuple[tuple[str, ...], Convention | None]]:
    """A format's field sets, ours and public sets', the one asking for more fields first (stable)."""
    sigs = [(sig, None) for sig in SIGNATURES[fmt]] + [(c.required, c) for c in CONVENTIONS if c.format == fmt]
    return sorted(sigs, key=lambda s: -len(s[0]))


def _explain(fmt: str, convention: Convention | None, given: bool = False) -> str:
    """'format instruction (data.format; Alpaca fields instruction/input/output: output is read as response)'."""
    notes = (["data.format"] if given else []) + ([_convention_note(convention)] if convention else [])
    return f"format {fmt}" + (f" ({'; '.join(notes)})" if notes else "")


def detect_format(rows: list[RawRow], source: str, candidates: tuple[str, ...] | None = None) -> Detection:
    """The record format most of the (first SAMPLE) records match, with what was seen.

    `candidates` limits the formats (those that can feed a task the recipe names); when none
    matches, the first candidate is taken and validation then names every missing field.
    """
    sample = [r.record for r in rows[:SAMPLE] if isinstance(r.record, dict)]
    if not sample:
        raise DataError(f"{source}: no JSON-object records to detect a format from")
    fields = Counter(k for rec in sample for k in rec)
    for fmt in SIGNATURES:
        if candidates and fmt not in candidates:
            continue
        for sig, convention in _signatures(fmt):
            share = min(fields[f] for f in sig) / len(sample)
            if share >= 0.5:
                # a convention's own fields are read; a record field it renames onto is checked per row
                read = set(convention.fields) | set(convention.renames) if convention else set(sig) | {"input"}
                extra = sorted(set(fields) - read)
                why = (f"{_explain(fmt, convention)}: fields {', '.join(sig)} in {share:.0%} of the first "
                       f"{len(sample)} records" + (f"; other fields ignored: {', '.join(extra)}" if extra else ""))
                return Detection(fmt, why, convention)
    common = ", ".join(f"{k} ({n})" for k, n in fields.most_common(12))
    if candidates:
        return Detection(candidates[0], f"format {candidates[0]} (implied by data.task); records have fields {common}")
    expected = "; ".join(f"{fmt}: " + " or ".join("+".join(s) for s in sigs) for fmt, sigs in SIGNATURES.items())
    raise DataError(f"{source}: cannot tell the record format: records have fields {common}; expected {expected}. "
                    "Map your columns with data.columns, e.g. {text: review, label: sentiment}")


def explain_given(fmt: str, rows: list[RawRow]) -> Detection:
    """A format the recipe names (data.format), with the share of records that carry its fields."""
    sample = [r.record for r in rows[:SAMPLE] if isinstance(r.record, dict)]

    def share(sig: tuple[str, ...]) -> float:
        return sum(all(f in rec for f in sig) for rec in sample) / max(len(sample), 1)

    # a public set's names when most records carry them, else the format's own fields
    sig, convention = next(((s, c) for s, c in _signatures(fmt) if c and share(s) >= 0.5), (SIGNATURES[fmt][0], None))
    return Detection(fmt, f"{_explain(fmt, convention, given=True)}: fields {', '.join(sig)} in "
                          f"{share(sig):.0%} of the first {len(sample)} records", convention)
