"""Record formats: map a user's columns, detect the format of a file's records, and say why.

    rows = apply_columns(rows, {"text": "review", "label": "sentiment"})
    detected = detect_format(rows)          # Detection(format="classification", explanation="...")

Detection looks at which fields the records have (after column mapping) and picks the first
format whose required fields most records carry, in this order: chat (`messages`), preference
(`prompt`, `chosen`, `rejected`), instruction (`instruction`, `response`), extraction (`input`,
`output`), classification (`text`, `label`), completion (`prompt` + `completion`, or `text`).
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


@dataclass
class Detection:
    format: str
    explanation: str


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
    out = []
    for row in rows:
        if isinstance(row.record, dict):
            record = {k: v for k, v in row.record.items() if k not in columns.values()}
            record.update({field: row.record[col] for field, col in columns.items() if col in row.record})
            row = RawRow(row.where, record, row.problem)
        out.append(row)
    return out


def detect_format(rows: list[RawRow], source: str, candidates: tuple[str, ...] | None = None) -> Detection:
    """The record format most of the (first SAMPLE) records match, with what was seen.

    `candidates` limits the formats (those that can feed a task the recipe names); when none
    matches, the first candidate is taken and validation then names every missing field.
    """
    sample = [r.record for r in rows[:SAMPLE] if isinstance(r.record, dict)]
    if not sample:
        raise DataError(f"{source}: no JSON-object records to detect a format from")
    fields = Counter(k for rec in sample for k in rec)
    for fmt, signatures in SIGNATURES.items():
        if candidates and fmt not in candidates:
            continue
        for sig in signatures:
            share = min(fields[f] for f in sig) / len(sample)
            if share >= 0.5:
                extra = sorted(set(fields) - set(sig) - {"input"})
                why = (f"format {fmt}: fields {', '.join(sig)} in {share:.0%} of the first {len(sample)} records"
                       + (f"; other fields ignored: {', '.join(extra)}" if extra else ""))
                return Detection(fmt, why)
    common = ", ".join(f"{k} ({n})" for k, n in fields.most_common(12))
    if candidates:
        return Detection(candidates[0], f"format {candidates[0]} (implied by data.task); records have fields {common}")
    expected = "; ".join(f"{fmt}: " + " or ".join("+".join(s) for s in sigs) for fmt, sigs in SIGNATURES.items())
    raise DataError(f"{source}: cannot tell the record format: records have fields {common}; expected {expected}. "
                    "Map your columns with data.columns, e.g. {text: review, label: sentiment}")


def explain_given(fmt: str, rows: list[RawRow]) -> Detection:
    """A format the recipe names (data.format), with the share of records that carry its fields."""
    sample = [r.record for r in rows[:SAMPLE] if isinstance(r.record, dict)]
    sig = SIGNATURES[fmt][0]
    share = sum(all(f in rec for f in sig) for rec in sample) / max(len(sample), 1)
    return Detection(fmt, f"format {fmt} (data.format): fields {', '.join(sig)} in {share:.0%} of the first {len(sample)} records")
