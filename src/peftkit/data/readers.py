"""Read a data file into raw rows, each tagged with where it came from (file and line, or CSV row).

    rows, info = read_file(Path("data.jsonl.gz"))
    rows[0].where      # 'data.jsonl.gz:1'
    rows[0].record     # the parsed object (or None, with rows[0].problem saying why)

Supported: JSON Lines (`.jsonl`, `.jsonl.gz`), JSON arrays (`.json`, `.json.gz`; a `.json` file of one object
per line is read as JSON Lines), CSV/TSV (`.csv`, `.tsv`, quoted multi-line fields), Parquet, and
folders written by `datasets.Dataset.save_to_disk`. Text must be UTF-8 (a BOM and CRLF line endings
are fine). A file that is not what its name says - gzip bytes named `.jsonl`, a directory, a missing
path, Latin-1 bytes - is a DataError naming the file, the line and what was found; so is a text
file with nothing but blank lines in it.

JSON Lines are read line by line here (not by a library) so every problem keeps its line number.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
KINDS = ("jsonl", "jsonl.gz", "json", "json.gz", "csv", "tsv", "parquet", "datasets folder")


@dataclass
class RawRow:
    where: str  # "file.jsonl:12" or "file.csv row 7 (line 9)"
    record: Any  # the parsed value; None when `problem` is set
    problem: str | None = None


@dataclass
class FileInfo:
    path: str
    kind: str  # one of KINDS
    sha256: str  # of the file's bytes (folders: of every file in it, in name order)
    rows: int


def read_file(path: Path) -> tuple[list[RawRow], FileInfo]:
    """Every row of a data file with its location; file-level problems raise DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        rows, digest = _read_datasets_folder(path), _folder_sha256(path)
        return rows, FileInfo(str(path), "datasets folder", digest, len(rows))
    raw = path.read_bytes()
    kind = _kind_of(path, raw)
    if kind == "parquet":
        rows = _read_parquet(path)
    else:
        if kind.endswith(".gz"):
            try:
                raw_text = gzip.decompress(raw)
            except (OSError, EOFError) as exc:
                raise DataError(f"{path}: named .gz but not readable as gzip ({exc})") from None
        else:
            raw_text = raw
        text = _decode(path, raw_text)
        if not text.strip():
            raise DataError(f"{path}: the file is empty ({'only blank lines' if raw_text else 'no bytes'})")
        if kind in ("jsonl", "jsonl.gz"):
            rows = _read_jsonl(path, text)
        elif kind in ("json", "json.gz"):
            rows = _read_json(path, text)
        else:
            rows = _read_csv(path, text, delimiter="\t" if kind == "tsv" else ",")
    return rows, FileInfo(str(path), kind, hashlib.sha256(raw).hexdigest(), len(rows))


def _kind_of(path: Path, head: bytes) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl.gz", ".json.gz")):
        return name.rsplit(".", 2)[-2] + ".gz"
    suffix = path.suffix.lower()
    if head.startswith(GZIP_MAGIC):
        raise DataError(f"{path}: the file is gzip-compressed but named {suffix or 'without a suffix'}; "
                        f"rename it to {path.stem}{suffix}.gz (or decompress it)")
    if head.startswith(PARQUET_MAGIC) and suffix != ".parquet":
        raise DataError(f"{path}: the file is Parquet but named {suffix}; rename it to {path.stem}.parquet")
    known = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
    if suffix not in known:
        raise DataError(f"{path}: unknown data format '{suffix or path.name}' "
                        "(expected .jsonl, .jsonl.gz, .json, .csv, .tsv, .parquet or a `datasets` folder)")
    if known[suffix] == "parquet" and not head.startswith(PARQUET_MAGIC):
        raise DataError(f"{path}: named .parquet but it is not a Parquet file (it does not start with PAR1)")
    return known[suffix]


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 text (a leading BOM is dropped); other encodings fail with the line of the first bad byte."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = raw[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{path}:{line}: not UTF-8 (byte 0x{byte} at column {column}); the file is probably Latin-1 or "
            "Windows-1252: re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    return text.removeprefix("\ufeff")


def _read_jsonl(path: Path, text: str) -> list[RawRow]:
    rows = []
    # split on \n only: CRLF leaves a \r that json ignores as whitespace, and a \u2028 inside a
    # string must not end a line (str.splitlines would split there)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rows.append(RawRow(where, json.loads(line)))
        except json.JSONDecodeError as exc:
            rows.append(RawRow(where, None, f"not valid JSON ({exc.msg} at column {exc.colno})"))
    return rows


def _read_json(path: Path, text: str) -> list[RawRow]:
    """A JSON array of records, each row tagged with the line its element starts on."""
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] == "{":  # one object per line in a .json file: JSON Lines
        return _read_jsonl(path, text)
    if text[start : start + 1] != "[":
        found = text[start : start + 20].strip() or "an empty file"
        raise DataError(f"{path}:1: expected a JSON array of records (or one object per line), found {found!r}")
    decoder = json.JSONDecoder()
    rows, pos = [], start + 1
    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "]":
            break
        lineno = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            # inside an array one broken element hides where the next starts: stop at the first
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        rows.append(RawRow(f"{path}:{lineno}", value))
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            line = text.count("\n", 0, pos) + 1
            raise DataError(f"{path}:{line}: expected ',' or ']' after an array element")
    return rows


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(path: Path, text: str, delimiter: str) -> list[RawRow]:
    """Rows keyed by the header; each tagged with its data row number and the line it starts on."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"{path}:1: not readable as {'TSV' if delimiter == chr(9) else 'CSV'} ({exc})") from None
    if not header:
        raise DataError(f"{path}: empty file (expected a header row)")
    header = [h.strip() for h in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path}:1: header repeats the column(s) {', '.join(dupes)}")
    rows, rowno, line = [], 0, reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not readable as CSV ({exc})") from None
        rowno += 1
        where = f"{path} row {rowno} (line {line})"
        line = reader.line_num + 1
        if not values or (len(values) == 1 and not values[0].strip()):
            rowno -= 1  # blank line
            continue
        if len(values) != len(header):
            rows.append(RawRow(where, None, f"expected {len(header)} fields ({', '.join(header)}), found {len(values)}"))
            continue
        rows.append(RawRow(where, dict(zip(header, values))))
    return rows


def _read_parquet(path: Path) -> list[RawRow]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    return [RawRow(f"{path} row {i}", r) for i, r in enumerate(records, start=1)]


def _read_datasets_folder(path: Path) -> list[RawRow]:
    """A folder written by `Dataset.save_to_disk` (Arrow files, no pickle)."""
    if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise DataError(f"{path}: a folder, but not one written by `datasets` save_to_disk "
                        "(no dataset_info.json or dataset_dict.json); give a data file instead")
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        raise DataError(f"{path}: a `datasets` DatasetDict with splits {splits}; point at one split folder "
                        f"(e.g. {path / (splits[0] if splits else 'train')}) or give them as data.files")
    from datasets import load_from_disk

    dataset = load_from_disk(str(path))
    return [RawRow(f"{path} row {i}", r) for i, r in enumerate(dataset.to_list(), start=1)]


def _folder_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()
